using Kiln.Store.Metadata;

namespace Kiln.Store.Gc;

/// <summary>
/// Keeps the garbage collector and registrations apart: uploads hold it shared while they move a blob into place
/// and register it; the collector holds it exclusively while it marks and sweeps. Without it, a blob committed but
/// not yet registered could be swept, or a path registered after the mark could lose a reference. Within the process
/// it is a reader-writer lock. With several front doors on one database the process also holds the database's
/// (<see cref="Metadata.IPathMetadata.LockAgainstCollectionAsync"/>): shared from its first reader until its last, one
/// lock for all of them (so registrations cost no database round trip while others are in flight, and hold no pooled
/// connection), exclusive for its collector — always after its own lock, so no two holders ever wait for each other in
/// opposite orders. A busy front door's registrations may overlap for hours, so while it holds the database's lock
/// shared it asks every <c>awaitedCheck</c> (at the next registration) whether another front door's collection is
/// queued for it; if so, new registrations wait until those in flight end, the lock is let go, and they queue for it
/// again behind the collection (PostgreSQL grants advisory locks in order). A collection therefore waits for the
/// registrations in flight, never for a gap that a busy front door might not leave. When the last registration ends,
/// the database's lock is kept for <c>linger</c> more (100 ms by default): a client's requests come one after another
/// (a no-op evaluation adds hundreds of temporary roots, each a registration), and taking and letting go of the lock
/// for each would cost two more round trips apiece. A collection here, or one elsewhere seen waiting, ends it at once.
/// Before a shared hold of the database's lock ends, what its holders recorded only here is written to the database
/// (<see cref="BeforeLettingGo"/>: the temporary roots added during it, in one round trip).
/// </summary>
public sealed class GcLock(Func<bool, CancellationToken, Task<ICollectionLock?>>? acrossProcesses = null, TimeSpan? awaitedCheck = null,
    TimeSpan? linger = null) : IDisposable
{
    private readonly SemaphoreSlim _exclusive = new(1, 1);
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly object _count = new();
    private readonly long _checkEveryMs = (long)(awaitedCheck ?? TimeSpan.FromSeconds(1)).TotalMilliseconds;
    private int _readers;
    private ICollectionLock? _sharedAcross; // the database's shared lock, held from the first reader to the last
    private long _checkedAt; // Environment.TickCount64 when it was taken or last asked whether it is awaited
    private readonly TimeSpan _linger = linger ?? TimeSpan.FromMilliseconds(100);
    private bool _lingering; // no reader, but _exclusive and the database's lock (if any) still held (under _count)
    private int _draining; // a collection here, or a registration making way for one elsewhere, waits for the readers (under _count)
    private long _lingerGeneration; // which linger a delayed release is for (under _count)
    private Func<Task>? _beforeLettingGo; // writes what holders recorded only here to the database (TempRoots)
    private long _periods; // shared holds begun (under _count)
    private long? _period; // the shared hold in force, once both locks are taken, until they are let go (under _count)

    /// <summary>
    /// The shared hold in force now, or null when this process does not hold the lock shared. Each hold, from its first
    /// reader taking the lock to the lock being let go (after the last, and any linger), has its own number: the same
    /// number at two moments means the lock was held without a break between them, so no collection — here or, on a
    /// shared database, at any other front door — can have run in between.
    /// </summary>
    public long? SharedPeriod
    {
        get
        {
            lock (_count)
            {
                return _period;
            }
        }
    }

    /// <summary>
    /// Runs <paramref name="publish"/> each time a shared hold ends, before the database's lock is let go: what the holders recorded
    /// only in this process (temporary roots) is in the database before any other front door's collection can start,
    /// so it need not be written there one request at a time. It must not throw.
    /// </summary>
    internal void BeforeLettingGo(Func<Task> publish)
    {
        if (_beforeLettingGo is not null)
        {
            throw new InvalidOperationException("the collection lock already has its writer");
        }

        _beforeLettingGo = publish;
    }

    /// <summary>The lock, held; dispose to release it.</summary>
    public sealed class Holder(Func<ValueTask> release, bool acrossProcesses) : IAsyncDisposable
    {
        private int _released;

        /// <summary>Other processes (front doors) write this metadata: their sessions' temporary roots are not seen here.</summary>
        public bool AcrossProcesses => acrossProcesses;

        public ValueTask DisposeAsync() => Interlocked.Exchange(ref _released, 1) == 0 ? release() : ValueTask.CompletedTask;
    }

    /// <summary>Held by registrations (many at once).</summary>
    public async Task<Holder> SharedAsync(CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (await AwaitedElsewhereAsync(cancellationToken).ConfigureAwait(false))
            {
                // Holding the gate, as a collection here would: the readers in flight finish, the last lets the
                // database's lock go and releases _exclusive; this reader then takes both again as the first.
                await DrainAsync(cancellationToken).ConfigureAwait(false);
                _exclusive.Release();
            }

            bool first;
            lock (_count)
            {
                if (_lingering)
                {
                    _lingering = false; // the lock the last reader kept: this one holds it now
                    first = false;
                    _readers++;
                }
                else
                {
                    first = ++_readers == 1;
                }
            }

            if (first)
            {
                try
                {
                    await _exclusive.WaitAsync(cancellationToken).ConfigureAwait(false);
                    try
                    {
                        _sharedAcross = acrossProcesses is null ? null : await acrossProcesses(false, cancellationToken).ConfigureAwait(false);
                        _checkedAt = Environment.TickCount64;
                        lock (_count)
                        {
                            _period = ++_periods;
                        }
                    }
                    catch
                    {
                        _exclusive.Release();
                        throw;
                    }
                }
                catch
                {
                    lock (_count)
                    {
                        _readers--;
                    }

                    throw;
                }
            }
        }
        finally
        {
            _gate.Release();
        }

        return new Holder(async () =>
        {
            // The last reader leaves both locks lingering, for the next reader to take over: let go at once, or after
            // _linger when the database's lock is held and nobody waits for the readers to be gone.
            long? generation = null;
            var linger = false;
            lock (_count)
            {
                if (--_readers == 0)
                {
                    _lingering = true;
                    generation = ++_lingerGeneration;
                    linger = _sharedAcross is not null && _linger > TimeSpan.Zero && _draining == 0;
                }
            }

            if (generation is { } last)
            {
                if (linger)
                {
                    _ = LingerAsync(last);
                }
                else
                {
                    await EndLingerAsync(last).ConfigureAwait(false);
                }
            }
        }, _sharedAcross is not null);
    }

    // The database's lock kept after the last reader: let go after _linger unless a reader took it over meanwhile.
    private async Task LingerAsync(long generation)
    {
        await Task.Delay(_linger).ConfigureAwait(false);
        try
        {
            await EndLingerAsync(generation).ConfigureAwait(false);
        }
        catch (ObjectDisposedException)
        {
            // The store closed meanwhile (it ends any linger first; this one lost the race): its session went with it.
        }
    }

    /// <summary>Lets go of a lingering hold now: before the store closes the database.</summary>
    public Task StopLingeringAsync() => EndLingerAsync();

    // Under the gate: waits until no reader holds the lock (this process's _exclusive taken), with no linger after the
    // last: who waits here wants the lock let go, not kept.
    private async Task DrainAsync(CancellationToken cancellationToken)
    {
        lock (_count)
        {
            _draining++;
        }

        try
        {
            await EndLingerAsync().ConfigureAwait(false);
            await _exclusive.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            lock (_count)
            {
                _draining--;
            }
        }
    }

    // Ends a linger (that one, or any when null): both locks go, as when the last reader left.
    private async Task EndLingerAsync(long? generation = null)
    {
        ICollectionLock? across;
        lock (_count)
        {
            if (!_lingering || (generation is { } g && g != _lingerGeneration))
            {
                return;
            }

            _lingering = false;
            across = _sharedAcross;
            _sharedAcross = null;
            _period = null; // (before the locks go)
        }

        await ReleaseAsync(across, shared: true).ConfigureAwait(false);
    }

    // Under the gate: whether this process holds the database's lock shared and another process's collection waits
    // for it. Asked at most every _checkEveryMs, so a busy front door pays one query a second, an idle one none.
    private async Task<bool> AwaitedElsewhereAsync(CancellationToken cancellationToken)
    {
        ICollectionLock? held;
        lock (_count)
        {
            held = _readers > 0 || _lingering ? _sharedAcross : null;
        }

        if (held is null || Environment.TickCount64 - _checkedAt < _checkEveryMs)
        {
            return false;
        }

        _checkedAt = Environment.TickCount64;
        try
        {
            return await held.IsAwaitedAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw;
        }
#pragma warning disable CA1031 // the lock's session failed: let it go and take it again on a new one
        catch (Exception)
#pragma warning restore CA1031
        {
            return true;
        }
    }

    /// <summary>Held by a collection (alone).</summary>
    public async Task<Holder> ExclusiveAsync(CancellationToken cancellationToken)
    {
        // Holding the gate stops new readers from slipping in while the collector waits for the current ones.
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await DrainAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }

        ICollectionLock? across;
        try
        {
            across = acrossProcesses is null ? null : await acrossProcesses(true, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            _exclusive.Release();
            throw;
        }

        return new Holder(() => ReleaseAsync(across), across is not null);
    }

    // The database's lock first, then this process's: the order they were taken in, reversed. A shared hold first writes
    // what its holders owe the database (no reader adds to that now: _exclusive is still held).
    private async ValueTask ReleaseAsync(ICollectionLock? across, bool shared = false)
    {
        try
        {
            if (shared && _beforeLettingGo is { } publish)
            {
                await publish().ConfigureAwait(false);
            }

            if (across is not null)
            {
                await across.DisposeAsync().ConfigureAwait(false);
            }
        }
        finally
        {
            _exclusive.Release();
        }
    }

    public void Dispose()
    {
        _exclusive.Dispose();
        _gate.Dispose();
    }
}
