using System.Collections.Concurrent;
using Kiln.Nix.StorePaths;
using Kiln.Store.Metadata;

namespace Kiln.Store.Gc;

/// <summary>
/// Temporary roots: paths a live session is using (AddTempRoot, and every path it uploaded, built or substituted, and
/// the inputs of the steps it builds), which the garbage collector must not delete from that account's view while the
/// session lasts. Kept in memory: they die with the session, and with the server. On a database several front doors
/// share (<see cref="IPathMetadata.SharesTempRoots"/>), once <see cref="ShareAsync"/> has named this front door, each is
/// also published there — under the collection lock held shared, so never in the middle of a collection — before it
/// is in effect; they count for the other front doors' collectors while this front door renews its lease (one row,
/// by the database's clock), so a front door that went away stops protecting anything.
/// </summary>
public sealed class TempRoots(IPathMetadata metadata, GcLock gcLock) : IAsyncDisposable
{
    /// <summary>How long a front door's published roots count unless it renews its lease; renewed every third of it.</summary>
    public static readonly TimeSpan Lease = TimeSpan.FromMinutes(5);

    // Per session: its account, and per path the publication that makes it a root (completed at once when nothing is
    // published; a second request for a path waits for the first's, and fails with it).
    private readonly ConcurrentDictionary<long, (long Account, ConcurrentDictionary<StorePath, Task> Paths)> _sessions = new();
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
        await metadata.RenewTempRootsAsync(frontDoor, Lease, cancellationToken).ConfigureAwait(false);
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
            await metadata.RenewTempRootsAsync(frontDoor, Lease, CancellationToken.None).ConfigureAwait(false);
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
        _sessions[id] = (account, new ConcurrentDictionary<StorePath, Task>());
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
        if (!metadata.SharesTempRoots)
        {
            return [];
        }

        // (An offline command, which names no front door, spares every front door's.)
        var paths = await metadata.GetTempRootsAsync(account, _frontDoor ?? "", cancellationToken).ConfigureAwait(false);
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

        if (_frontDoor is not { } frontDoor)
        {
            foreach (var path in paths)
            {
                entry.Paths.TryAdd(path, Task.CompletedTask);
            }

            return;
        }

        var publication = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var mine = new List<StorePath>();
        var alsoPublished = new List<StorePath>();
        var waits = new HashSet<Task>();
        foreach (var path in paths)
        {
            var task = entry.Paths.GetOrAdd(path, publication.Task);
            if (task == publication.Task)
            {
                mine.Add(path);
            }
            else if (lockHeld && !task.IsCompletedSuccessfully)
            {
                // Holding the lock shared, this call must not wait for a publication that may itself be waiting for
                // the lock (queued behind a collection that waits for this holder): it publishes the path as well (a
                // row written twice is one row).
                alsoPublished.Add(path);
            }
            else
            {
                waits.Add(task);
            }
        }

        if (mine.Count + alsoPublished.Count > 0)
        {
            try
            {
                var shared = lockHeld ? null : await gcLock.SharedAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    await metadata.PublishTempRootsAsync(frontDoor, session, entry.Account, [.. mine, .. alsoPublished], cancellationToken).ConfigureAwait(false);
                }
                finally
                {
                    if (shared is not null)
                    {
                        await shared.DisposeAsync().ConfigureAwait(false);
                    }
                }

                publication.SetResult();
            }
            catch (Exception e)
            {
                // Not published, so not held: the next request naming them tries again.
                foreach (var path in mine)
                {
                    entry.Paths.TryRemove(new KeyValuePair<StorePath, Task>(path, publication.Task));
                }

                publication.SetException(e);
                throw;
            }
        }

        await Task.WhenAll(waits).ConfigureAwait(false);
    }

    internal void Close(long session)
    {
        if (_sessions.TryRemove(session, out var entry) && _frontDoor is { } frontDoor)
        {
            // In the background (a session's end must not wait on the database), after any publication still in
            // flight: a row written after the withdrawal would hold its path for as long as this front door lives.
            _ = Task.Run(async () =>
            {
                try
                {
                    await Task.WhenAll(entry.Paths.Values).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
                    await metadata.WithdrawTempRootsAsync(frontDoor, session, CancellationToken.None).ConfigureAwait(false);
                }
#pragma warning disable CA1031 // left until this front door starts again (a few rows)
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
        /// <summary>Makes paths roots (published first on a shared database); <paramref name="lockHeld"/>: the caller holds the collection lock shared.</summary>
        public Task AddAsync(IReadOnlyCollection<StorePath> paths, bool lockHeld, CancellationToken cancellationToken) =>
            owner.AddAsync(id, paths, lockHeld, cancellationToken);

        public void Dispose() => owner.Close(id);
    }
}
