namespace Kiln.Store.Gc;

/// <summary>
/// Keeps the garbage collector and registrations apart: uploads hold it shared while they move a blob into place
/// and register it; the collector holds it exclusively while it marks and sweeps. Without it, a blob committed but
/// not yet registered could be swept, or a path registered after the mark could lose a reference.
/// </summary>
public sealed class GcLock : IDisposable
{
    private readonly SemaphoreSlim _exclusive = new(1, 1);
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly object _count = new();
    private int _readers;

    public async Task<IDisposable> SharedAsync(CancellationToken cancellationToken)
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

    public async Task<IDisposable> ExclusiveAsync(CancellationToken cancellationToken)
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
