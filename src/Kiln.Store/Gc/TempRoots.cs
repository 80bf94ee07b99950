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
/// evaluation's hundreds of roots cost a few round trips, not one each. Roots are also written in the background within
/// <see cref="EarlyWrite"/> of being added, so a hold that lasts (a busy front door's may last hours) owes little when
/// it ends, and little is at stake if the database drops the lock's session while this front door still counts on it.
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

    /// <summary>How soon after it is added a root is written in the background, whether or not the hold ends.</summary>
    public static readonly TimeSpan EarlyWrite = TimeSpan.FromMilliseconds(100);

    // What is owed to the database, the write in flight (one at a time: _writing), whether a background write is due,
    // and the sessions that have rows there to withdraw at their end. Under _owed.
    private readonly Lock _owed = new();
    private List<TempRoot> _unpublished = [];
    private Task _publishing = Task.CompletedTask;
    private bool _writeDue;
    private bool _disposed;
    private readonly HashSet<long> _published = [];
    private readonly SemaphoreSlim _writing = new(1, 1);

    public TempRoots(IPathMetadata metadata, GcLock gcLock, ILogger? logger = null)
    {
        _metadata = metadata;
        _gcLock = gcLock;
        _logger = logger ?? NullLogger.Instance;
        gcLock.BeforeLettingGo(() => WriteAsync(holdEnds: true));
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

                WriteSoon(EarlyWrite);
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

    // Under _owed: a background write of what is owed, after delay, unless one is due already.
    private void WriteSoon(TimeSpan delay)
    {
        if (_writeDue || _disposed || _unpublished.Count == 0)
        {
            return;
        }

        _writeDue = true;
        _ = Task.Run(async () =>
        {
            await Task.Delay(delay).ConfigureAwait(false);
            lock (_owed)
            {
                _writeDue = false;
            }

            var written = await WriteAsync(holdEnds: false).ConfigureAwait(false);
            lock (_owed)
            {
                WriteSoon(written ? EarlyWrite : TimeSpan.FromSeconds(1)); // what came meanwhile, or what failed, again
            }
        });
    }

    // Writes what is owed, of the sessions still open: before the database's shared lock goes (holdEnds, the barrier a
    // collection elsewhere relies on), or early in the background. Never throws; false when the database refused. At a
    // hold's end it is tried a few times while the lock is still held; if the database keeps refusing, the roots stay
    // owed (tried again every second) and the failure is logged: a collection elsewhere meanwhile does not see them.
    private async Task<bool> WriteAsync(bool holdEnds)
    {
        if (_frontDoor is not { } frontDoor)
        {
            return true;
        }

        await _writing.WaitAsync().ConfigureAwait(false); // a hold's end also waits for an early write in flight
        List<TempRoot> roots;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_owed)
        {
            roots = _unpublished.Where(r => _sessions.ContainsKey(r.Session)).ToList();
            _unpublished = [];
            foreach (var root in roots)
            {
                _published.Add(root.Session);
            }

            if (roots.Count > 0)
            {
                _publishing = done.Task;
            }
        }

        try
        {
            if (roots.Count == 0)
            {
                return true;
            }

            for (var attempt = 1; ; attempt++)
            {
                try
                {
                    await _metadata.PublishTempRootsAsync(frontDoor, roots, CancellationToken.None).ConfigureAwait(false);
                    return true;
                }
                catch (ObjectDisposedException)
                {
                    return true; // the store closed (its sessions with it)
                }
#pragma warning disable CA1031 // a moment's failure: again, the lock still held
                catch (Exception) when (holdEnds && attempt < 4)
#pragma warning restore CA1031
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(250 << attempt)).ConfigureAwait(false);
                }
            }
        }
#pragma warning disable CA1031 // owed again, and logged when a hold ends without them
        catch (Exception e)
#pragma warning restore CA1031
        {
            lock (_owed)
            {
                var owed = roots.Where(r => _sessions.ContainsKey(r.Session)).ToList();
                _unpublished.InsertRange(0, owed);
                if (holdEnds)
                {
                    StoreLog.TempRootsUnpublished(_logger, owed.Count, e);
                    WriteSoon(TimeSpan.FromSeconds(1));
                }
            }

            return false;
        }
        finally
        {
            done.SetResult();
            _writing.Release();
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
        lock (_owed)
        {
            _disposed = true;
        }

        if (_renewal is not null)
        {
            await _renewal.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>One session's handle on its temp roots.</summary>
    public sealed class SessionRoots(TempRoots owner, long id) : IDisposable
    {
        /// <summary>Makes paths roots (written to a shared database before the hold of the lock they were added in ends); <paramref name="lockHeld"/>: the caller holds the collection lock shared.</summary>
        public Task AddAsync(IReadOnlyCollection<StorePath> paths, bool lockHeld, CancellationToken cancellationToken) =>
            owner.AddAsync(id, paths, lockHeld, cancellationToken);

        public void Dispose() => owner.Close(id);
    }
}
