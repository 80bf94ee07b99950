using System.Collections.Concurrent;
using Kiln.Nix.StorePaths;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Logging;

namespace Kiln.Store;

/// <summary>
/// Counts the NAR bytes each account uploads and downloads, and when it last used which paths (for its retention),
/// in memory, and adds them to the database every few seconds in one transaction each (a copy of 300 paths costs no
/// write per path) and when the store closes; a collection writes them first. Figures not yet written are part of
/// what <see cref="Pending"/> gives, so a report read through this process is current. A process killed between two
/// writes loses at most those seconds' counts: usage, not billing-grade accounting.
/// </summary>
public sealed partial class UsageMeter : IAsyncDisposable
{
    private readonly IPathMetadata _metadata;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<(long Account, long Day), Counts> _pending = new();
    private readonly ConcurrentDictionary<(long Account, StorePath Path), long> _uses = new();
    private readonly Timer _timer;
    private readonly SemaphoreSlim _flushing = new(1, 1);

    internal UsageMeter(IPathMetadata metadata, ILogger logger, TimeSpan interval)
    {
        _metadata = metadata;
        _logger = logger;
        _timer = new Timer(_ => _ = FlushQuietlyAsync(), null, interval, interval);
    }

    private sealed class Counts
    {
        public long Uploaded;
        public long Downloaded;
    }

    /// <summary>Counts bytes an account uploaded (registered from its session) or downloaded (sent to it).</summary>
    public void Add(long account, long uploaded, long downloaded)
    {
        if (uploaded <= 0 && downloaded <= 0)
        {
            return;
        }

        var counts = _pending.GetOrAdd((account, StorageSample.DayOf(DateTimeOffset.UtcNow)), _ => new Counts());
        Interlocked.Add(ref counts.Uploaded, Math.Max(0, uploaded));
        Interlocked.Add(ref counts.Downloaded, Math.Max(0, downloaded));
    }

    /// <summary>The account used these paths now (downloaded them, built with them, was given them again).</summary>
    public void Used(long account, IEnumerable<StorePath> paths)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        foreach (var path in paths)
        {
            _uses[(account, path)] = now;
        }
    }

    /// <summary>What this process counted for the account and not yet written, per day.</summary>
    public IReadOnlyList<TransferSample> Pending(long account) =>
        [.. _pending.Where(p => p.Key.Account == account)
            .Select(p => new TransferSample(account, p.Key.Day, Interlocked.Read(ref p.Value.Uploaded), Interlocked.Read(ref p.Value.Downloaded)))];

    /// <summary>Writes what was counted so far (what a failed write held is counted again for the next).</summary>
    public async Task FlushAsync(CancellationToken cancellationToken)
    {
        await _flushing.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            // Each day's counts are taken out before they are written: bytes counted meanwhile go to a new entry.
            var taken = new List<TransferSample>();
            foreach (var key in _pending.Keys)
            {
                if (_pending.TryRemove(key, out var counts))
                {
                    taken.Add(new TransferSample(key.Account, key.Day, Interlocked.Read(ref counts.Uploaded), Interlocked.Read(ref counts.Downloaded)));
                }
            }

            var used = new List<(long, StorePath, long)>();
            foreach (var key in _uses.Keys)
            {
                if (_uses.TryRemove(key, out var time))
                {
                    used.Add((key.Account, key.Path, time));
                }
            }

            try
            {
                await _metadata.TouchPathsAsync(used, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                foreach (var (account, path, time) in used)
                {
                    _uses.AddOrUpdate((account, path), time, (_, later) => Math.Max(later, time));
                }

                throw;
            }

            try
            {
                await _metadata.AddTransfersAsync(taken, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                foreach (var sample in taken)
                {
                    var counts = _pending.GetOrAdd((sample.Account, sample.Day), _ => new Counts());
                    Interlocked.Add(ref counts.Uploaded, sample.Uploaded);
                    Interlocked.Add(ref counts.Downloaded, sample.Downloaded);
                }

                throw;
            }
        }
        finally
        {
            _flushing.Release();
        }
    }

    private async Task FlushQuietlyAsync()
    {
        try
        {
            await FlushAsync(CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // a failed write is tried again at the next tick; it must not reach the timer
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogFlushFailed(_logger, e);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _timer.DisposeAsync().ConfigureAwait(false);
        await FlushQuietlyAsync().ConfigureAwait(false);
        _flushing.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "writing the accounts' transferred bytes failed; they are written with the next")]
    private static partial void LogFlushFailed(ILogger logger, Exception exception);
}
