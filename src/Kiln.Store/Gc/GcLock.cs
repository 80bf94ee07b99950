namespace Kiln.Store.Gc;

/// <summary>
/// Keeps the garbage collector and registrations apart: uploads hold it shared while they move a blob into place
/// and register it; the collector holds it exclusively while it marks and sweeps. Without it, a blob committed but
/// not yet registered could be swept, or a path registered after the mark could lose a reference. Within the process
/// it is a reader-writer lock; with several front doors on one database each holder also takes the database's
/// (<see cref="Metadata.IPathMetadata.LockAgainstCollectionAsync"/>), always after this process's own, so no two
/// holders ever wait for each other in opposite orders.
/// </summary>
public sealed class GcLock(Func<bool, CancellationToken, Task<IAsyncDisposable?>>? acrossProcesses = null) : IDisposable
{
    private readonly SemaphoreSlim _exclusive = new(1, 1);
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly object _count = new();
    private int _readers;

    /// <summary>Held by registrations (many at once).</summary>
    public async Task<Holder> SharedAsync(CancellationToken cancellationToken) =>
        await AcrossAsync(await LocalSharedAsync(cancellationToken).ConfigureAwait(false), exclusive: false, cancellationToken).ConfigureAwait(false);

    /// <summary>Held by a collection (alone).</summary>
    public async Task<Holder> ExclusiveAsync(CancellationToken cancellationToken) =>
        await AcrossAsync(await LocalExclusiveAsync(cancellationToken).ConfigureAwait(false), exclusive: true, cancellationToken).ConfigureAwait(false);

    private async Task<Holder> AcrossAsync(IDisposable local, bool exclusive, CancellationToken cancellationToken)
    {
        try
        {
            return new Holder(local, acrossProcesses is null ? null : await acrossProcesses(exclusive, cancellationToken).ConfigureAwait(false));
        }
        catch
        {
            local.Dispose();
            throw;
        }
    }

    /// <summary>The lock, held: in this process, and in the database when other processes share it.</summary>
    public sealed class Holder(IDisposable local, IAsyncDisposable? database) : IAsyncDisposable
    {
        /// <summary>Other processes (front doors) write this metadata: their sessions' temporary roots are not seen here.</summary>
        public bool AcrossProcesses => database is not null;

        public async ValueTask DisposeAsync()
        {
            try
            {
                if (database is not null)
                {
                    await database.DisposeAsync().ConfigureAwait(false);
                }
            }
            finally
            {
                local.Dispose();
            }
        }
    }

    private async Task<IDisposable> LocalSharedAsync(CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            bool first;
            lock (_count)
            {
                first = ++_readers == 1;
            }

            if (first)
            {
                try
                {
                    await _exclusive.WaitAsync(cancellationToken).ConfigureAwait(false);
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

        return new Release(() =>
        {
            bool last;
            lock (_count)
            {
                last = --_readers == 0;
            }

            if (last)
            {
                _exclusive.Release();
            }
        });
    }

    private async Task<IDisposable> LocalExclusiveAsync(CancellationToken cancellationToken)
    {
        // Holding the gate stops new readers from slipping in while the collector waits for the current ones.
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _exclusive.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }

        return new Release(() => _exclusive.Release());
    }

    public void Dispose()
    {
        _exclusive.Dispose();
        _gate.Dispose();
    }

    private sealed class Release(Action release) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0)
            {
                release();
            }
        }
    }
}
