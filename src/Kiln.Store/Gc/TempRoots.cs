using System.Collections.Concurrent;
using Kiln.Nix.StorePaths;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Store.Gc;

/// <summary>
/// Temporary roots: paths a live session is using (AddTempRoot, and every path it uploaded, built or substituted, and
/// the inputs of the steps it builds), which the garbage collector must not delete from that account's view while the
/// session lasts. Kept in memory: they die with the session, and with the server. On a database several front doors
/// share (<see cref="IPathMetadata.SharesTempRoots"/>), once <see cref="ShareAsync"/> has named this front door, each is
/// also written there for the other front doors' collectors, which count them while this front door renews its lease
/// (one row, by the database's clock), so a front door that went away stops protecting anything. A root is added only
/// while this process holds the collection lock shared, and what was added during a hold of the database's lock is
/// written before that hold ends (<see cref="GcLock.BeforeLettingGo"/>): a collection elsewhere, which needs the lock
/// exclusively, starts only after that, so it sees every root as if each had been written at once — and a no-op
/// evaluation's hundreds of roots cost one round trip, not one each.
/// </summary>
public sealed class TempRoots : IAsyncDisposable
{
    /// <summary>How long a front door's published roots count unless it renews its lease; renewed every third of it.</summary>
    public static readonly TimeSpan Lease = TimeSpan.FromMinutes(5);

    private readonly IPathMetadata _metadata;
    private readonly GcLock _gcLock;
    private readonly ILogger _logger;

    // Per session: its account and its paths.
    private readonly ConcurrentDictionary<long, (long Account, ConcurrentDictionary<StorePath, byte> Paths)> _sessions = new();
    private long _nextSession;
    private string? _frontDoor;
    private Timer? _renewal;

    // What is owed to the database (roots added during the current hold), the write of it in flight, and the sessions
    // that have rows there to withdraw at their end. Under _owed.
    private readonly Lock _owed = new();
    private List<TempRoot> _unpublished = [];
    private Task _publishing = Task.CompletedTask;
    private readonly HashSet<long> _published = [];

    public TempRoots(IPathMetadata metadata, GcLock gcLock, ILogger? logger = null)
    {
        _metadata = metadata;
        _gcLock = gcLock;
        _logger = logger ?? NullLogger.Instance;
        gcLock.BeforeLettingGo(PublishAsync);
    }

    /// <summary>
    /// Publishes this front door's temp roots from now on (nothing on a database only this process uses), first
    /// withdrawing what an earlier run of it left.
    /// </summary>
    public async Task ShareAsync(string frontDoor, CancellationToken cancellationToken)
    {
        if (!_metadata.SharesTempRoots)
        {
            return;
        }

        await _metadata.WithdrawTempRootsAsync(frontDoor, null, cancellationToken).ConfigureAwait(false);
        await _metadata.RenewTempRootsAsync(frontDoor, Lease, cancellationToken).ConfigureAwait(false);
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
            await _metadata.RenewTempRootsAsync(frontDoor, Lease, CancellationToken.None).ConfigureAwait(false);
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

    /// <summary>The temp roots the other front doors on a shared database (with their lease holding) published for an account.</summary>
    public async Task<IReadOnlyList<KeyValuePair<string, StorePath>>> ElsewhereAsync(long account, CancellationToken cancellationToken)
    {
        if (!_metadata.SharesTempRoots)
        {
            return [];
        }

        // (An offline command, which names no front door, spares every front door's.)
        var paths = await _metadata.GetTempRootsAsync(account, _frontDoor ?? "", cancellationToken).ConfigureAwait(false);
        return paths.Select(p => new KeyValuePair<string, StorePath>("{temp:another-front-door-session}", p)).ToList();
    }

    // lockHeld: the caller holds the collection lock shared already (it is not taken twice: a collector waiting for
    // it would stop the second taking, and the first is never let go).
    internal async Task AddAsync(long session, IReadOnlyCollection<StorePath> paths, bool lockHeld, CancellationToken cancellationToken)
    {
        if (!_sessions.TryGetValue(session, out var entry))
        {
            return;
        }

        if (_frontDoor is null)
        {
            foreach (var path in paths)
            {
                entry.Paths.TryAdd(path, 0);
            }

            return;
        }

        // A path the session holds already was added under a hold of the lock, and is written before that hold ends.
        if (paths.All(entry.Paths.ContainsKey))
        {
            return;
        }

        var shared = lockHeld ? null : await _gcLock.SharedAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            lock (_owed)
            {
                foreach (var path in paths)
                {
                    if (entry.Paths.TryAdd(path, 0))
                    {
                        _unpublished.Add(new TempRoot(session, entry.Account, path));
                    }
                }
            }
        }
        finally
        {
            if (shared is not null)
            {
                await shared.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    // Before the database's shared lock goes: writes the roots added during the hold, of the sessions still open. Never
    // throws: tried a few times while the lock is still held; if the database keeps refusing, the roots are owed again
    // (written at the next hold's end) and the failure is logged.
    private async Task PublishAsync()
    {
        if (_frontDoor is not { } frontDoor)
        {
            return;
        }

        List<TempRoot> roots;
        TaskCompletionSource done;
        lock (_owed)
        {
            roots = _unpublished.Where(r => _sessions.ContainsKey(r.Session)).ToList();
            _unpublished = [];
            if (roots.Count == 0)
            {
                return;
            }

            foreach (var root in roots)
            {
                _published.Add(root.Session);
            }

            done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _publishing = done.Task;
        }

        try
        {
            for (var attempt = 1; ; attempt++)
            {
                try
                {
                    await _metadata.PublishTempRootsAsync(frontDoor, roots, CancellationToken.None).ConfigureAwait(false);
                    return;
                }
#pragma warning disable CA1031 // a moment's failure: again, the lock still held
                catch (Exception) when (attempt < 4)
#pragma warning restore CA1031
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(250 << attempt)).ConfigureAwait(false);
                }
            }
        }
#pragma warning disable CA1031 // logged, and owed again
        catch (Exception e)
#pragma warning restore CA1031
        {
            StoreLog.TempRootsUnpublished(_logger, roots.Count, e);
            lock (_owed)
            {
                _unpublished.InsertRange(0, roots.Where(r => _sessions.ContainsKey(r.Session)));
            }
        }
        finally
        {
            done.SetResult();
        }
    }

    internal void Close(long session)
    {
        if (!_sessions.TryRemove(session, out _) || _frontDoor is not { } frontDoor)
        {
            return;
        }

        // (Removed from the open sessions first: a write that starts after this leaves its roots out; one that started
        // before is the one awaited here.)
        Task publishing;
        lock (_owed)
        {
            _unpublished.RemoveAll(r => r.Session == session);
            if (!_published.Remove(session))
            {
                return; // nothing of it in the database
            }

            publishing = _publishing;
        }

        // In the background (a session's end must not wait on the database), after the write in flight: a row written
        // after the withdrawal would hold its path for as long as this front door lives.
        _ = Task.Run(async () =>
        {
            try
            {
                await publishing.ConfigureAwait(false);
                await _metadata.WithdrawTempRootsAsync(frontDoor, session, CancellationToken.None).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // left until this front door starts again (a few rows)
            catch (Exception)
#pragma warning restore CA1031
            {
            }
        });
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
        /// <summary>Makes paths roots (published first on a shared database); <paramref name="lockHeld"/>: the caller holds the collection lock shared.</summary>
        public Task AddAsync(IReadOnlyCollection<StorePath> paths, bool lockHeld, CancellationToken cancellationToken) =>
            owner.AddAsync(id, paths, lockHeld, cancellationToken);

        public void Dispose() => owner.Close(id);
    }
}
