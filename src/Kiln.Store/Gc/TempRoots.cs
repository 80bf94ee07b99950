using System.Collections.Concurrent;
using Kiln.Nix.StorePaths;
using Kiln.Store.Metadata;

namespace Kiln.Store.Gc;

/// <summary>
/// Temporary roots: paths a live session is using (AddTempRoot, and every path it uploaded, built or substituted),
/// which the garbage collector must not delete from that account's view while the session lasts. Kept in memory: they
/// die with the session, and with the server. On a database several front doors share (<see cref="IPathMetadata.SharesTempRoots"/>),
/// once <see cref="ShareAsync"/> has named this front door, each is also published there before it is in effect, under
/// a lease this front door renews, so the other front doors' collectors spare it; a front door that went away stops
/// protecting anything when its leases lapse.
/// </summary>
public sealed class TempRoots(IPathMetadata metadata) : IAsyncDisposable
{
    /// <summary>How long a published root lasts unless renewed; renewed every third of it.</summary>
    public static readonly TimeSpan Lease = TimeSpan.FromMinutes(5);

    private readonly ConcurrentDictionary<long, (long Account, ConcurrentDictionary<StorePath, byte> Paths)> _sessions = new();
    private long _nextSession;
    private string? _frontDoor;
    private Timer? _renewal;

    /// <summary>
    /// Publishes this front door's temp roots from now on (nothing on a database only this process uses), first
    /// withdrawing what an earlier run of it left.
    /// </summary>
    public async Task ShareAsync(string frontDoor, CancellationToken cancellationToken)
    {
        if (!metadata.SharesTempRoots)
        {
            return;
        }

        await metadata.WithdrawTempRootsAsync(frontDoor, null, cancellationToken).ConfigureAwait(false);
        _frontDoor = frontDoor;
        _renewal = new Timer(_ => _ = RenewAsync(), null, Lease / 3, Lease / 3);
    }

    private async Task RenewAsync()
    {
        if (_frontDoor is not { } frontDoor)
        {
            return;
        }

        try
        {
            var now = DateTimeOffset.UtcNow;
            await metadata.RenewTempRootsAsync(frontDoor, (now + Lease).ToUnixTimeSeconds(), now.ToUnixTimeSeconds(), CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // the database away for a moment: the next renewal comes well within the lease
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    /// <summary>Registers a session; dispose the result when it ends.</summary>
    public SessionRoots Open(long account)
    {
        var id = Interlocked.Increment(ref _nextSession);
        _sessions[id] = (account, new ConcurrentDictionary<StorePath, byte>());
        return new SessionRoots(this, id);
    }

    /// <summary>The temp roots of every live session of an account here, with a name per session.</summary>
    public IReadOnlyList<KeyValuePair<string, StorePath>> For(long account) =>
        _sessions.Where(s => s.Value.Account == account)
            .SelectMany(s => s.Value.Paths.Keys.Select(p => new KeyValuePair<string, StorePath>($"{{temp:session-{s.Key}}}", p)))
            .ToList();

    /// <summary>The unlapsed temp roots the other front doors on a shared database published for an account.</summary>
    public async Task<IReadOnlyList<KeyValuePair<string, StorePath>>> ElsewhereAsync(long account, CancellationToken cancellationToken)
    {
        if (!metadata.SharesTempRoots)
        {
            return [];
        }

        // (An offline command, which names no front door, spares every front door's.)
        var paths = await metadata.GetTempRootsAsync(account, _frontDoor ?? "", DateTimeOffset.UtcNow.ToUnixTimeSeconds(), cancellationToken).ConfigureAwait(false);
        return paths.Select(p => new KeyValuePair<string, StorePath>("{temp:another-front-door-session}", p)).ToList();
    }

    internal async Task AddAsync(long session, IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        if (!_sessions.TryGetValue(session, out var entry))
        {
            return;
        }

        var added = paths.Where(p => entry.Paths.TryAdd(p, 0)).ToList();
        if (_frontDoor is { } frontDoor && added.Count > 0)
        {
            try
            {
                await metadata.PublishTempRootsAsync(frontDoor, session, entry.Account, added, (DateTimeOffset.UtcNow + Lease).ToUnixTimeSeconds(), cancellationToken)
                    .ConfigureAwait(false);
            }
            catch
            {
                // Not published, so not held: the next request naming them tries again.
                foreach (var path in added)
                {
                    entry.Paths.TryRemove(path, out _);
                }

                throw;
            }
        }
    }

    internal void Close(long session)
    {
        if (_sessions.TryRemove(session, out _) && _frontDoor is { } frontDoor)
        {
            // In the background: a session's end must not wait on the database (its rows lapse anyway).
            _ = Task.Run(async () =>
            {
                try
                {
                    await metadata.WithdrawTempRootsAsync(frontDoor, session, CancellationToken.None).ConfigureAwait(false);
                }
#pragma warning disable CA1031 // left to lapse
                catch (Exception)
#pragma warning restore CA1031
                {
                }
            });
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_renewal is not null)
        {
            await _renewal.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>One session's handle on its temp roots.</summary>
    public sealed class SessionRoots(TempRoots owner, long id) : IDisposable
    {
        public Task AddAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken) => owner.AddAsync(id, paths, cancellationToken);

        public void Dispose() => owner.Close(id);
    }
}
