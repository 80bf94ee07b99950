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
    private readonly Lock _gate = new(); // over both tables: an add and a flush's taking never interleave
    private readonly Dictionary<(long Account, long Day), (long Uploaded, long Downloaded)> _pending = [];
    private readonly Dictionary<(long Account, StorePath Path), long> _uses = [];
    private readonly Timer _timer;
    private readonly SemaphoreSlim _flushing = new(1, 1);

    internal UsageMeter(IPathMetadata metadata, ILogger logger, TimeSpan interval)
    {
        _metadata = metadata;
        _logger = logger;
        _timer = new Timer(_ => _ = FlushQuietlyAsync(), null, interval, interval);
    }

    /// <summary>Counts bytes an account uploaded (registered from its session) or downloaded (sent to it).</summary>
    public void Add(long account, long uploaded, long downloaded)
    {
        if (uploaded <= 0 && downloaded <= 0)
        {
            return;
        }

        AddCounts(account, StorageSample.DayOf(DateTimeOffset.UtcNow), Math.Max(0, uploaded), Math.Max(0, downloaded));
    }

    private void AddCounts(long account, long day, long uploaded, long downloaded)
    {
        lock (_gate)
        {
            var (up, down) = _pending.GetValueOrDefault((account, day));
            _pending[(account, day)] = (up + uploaded, down + downloaded);
        }
    }

    /// <summary>The account used these paths now (downloaded them, built with them, asked for them again).</summary>
    public void Used(long account, IEnumerable<StorePath> paths)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        lock (_gate)
        {
            foreach (var path in paths)
            {
                _uses[(account, path)] = now;
            }
        }
    }

    /// <summary>Whether a use of the account's record of the path is counted and not yet written (tests).</summary>
    internal bool IsPendingUse(long account, StorePath path)
    {
        lock (_gate)
        {
            return _uses.ContainsKey((account, path));
        }
    }

    /// <summary>What this process counted for the account and not yet written, per day.</summary>
    public IReadOnlyList<TransferSample> Pending(long account)
    {
        lock (_gate)
        {
            return [.. _pending.Where(p => p.Key.Account == account).Select(p => new TransferSample(account, p.Key.Day, p.Value.Uploaded, p.Value.Downloaded))];
        }
    }

    /// <summary>Writes what was counted so far; what a failed write held is counted again for the next.</summary>
    public async Task FlushAsync(CancellationToken cancellationToken)
    {
        await _flushing.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            List<TransferSample> taken;
            List<(long, StorePath, long)> used;
            lock (_gate)
            {
                taken = [.. _pending.Select(p => new TransferSample(p.Key.Account, p.Key.Day, p.Value.Uploaded, p.Value.Downloaded))];
                used = [.. _uses.Select(u => (u.Key.Account, u.Key.Path, u.Value))];
                _pending.Clear();
                _uses.Clear();
            }

            var written = false;
            try
            {
                await _metadata.AddTransfersAsync(taken, cancellationToken).ConfigureAwait(false);
                written = true;
                await _metadata.TouchPathsAsync(used, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                lock (_gate)
                {
                    if (!written)
                    {
                        foreach (var sample in taken)
                        {
                            var (up, down) = _pending.GetValueOrDefault((sample.Account, sample.Day));
                            _pending[(sample.Account, sample.Day)] = (up + sample.Uploaded, down + sample.Downloaded);
                        }
                    }

                    foreach (var (account, path, time) in used)
                    {
                        _uses[(account, path)] = Math.Max(time, _uses.GetValueOrDefault((account, path)));
                    }
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
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "writing the accounts' transferred bytes and path uses failed; they are written with the next")]
    private static partial void LogFlushFailed(ILogger logger, Exception exception);
}
