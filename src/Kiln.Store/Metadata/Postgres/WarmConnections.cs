using System.Data;
using Npgsql;

namespace Kiln.Store.Metadata.Postgres;

/// <summary>
/// A few open connections kept between statements, the most recently used handed out first, in front of the data
/// source's pool. Npgsql's pool hands its idle connections out oldest first (a queue: npgsql/npgsql#4818). Once a
/// burst of requests had opened a dozen, each statement of a client asking one thing after another (a no-op rebuild's
/// lookups, a pull's narinfo GETs) went to another server process, whose plan cache and prepared statements for it
/// were still cold. Measured on loopback, one lookup after another through <c>FindPathByHashPartAsync</c>: 130 µs each
/// before a burst of 15 concurrent callers, 575–874 µs after it. Kept here, such statements go to the same few warm
/// server processes, and the rest of the pool serves bursts as before.
/// </summary>
internal sealed class WarmConnections(NpgsqlDataSource source, int capacity) : IAsyncDisposable
{
    // A kept connection idle longer than this goes back to the pool instead (whose pruning closes what stays idle):
    // a server that ends idle sessions is not handed a connection it may have dropped, more than the pool would.
    private const long MaxIdleMilliseconds = 10_000;

    // A connection goes back to the pool at least this long after it came from it, even if always in use: the pool
    // then applies the operator's Connection Lifetime (a load balancer's or a failover's reason to reconnect).
    private const long MaxKeptMilliseconds = 60_000;

    private readonly Lock _gate = new();
    private readonly Stack<(Lease Lease, long Since)> _kept = new();
    private int _waiting; // callers waiting on the pool: a connection let go goes to the pool then, where they wait
    private bool _disposed;

    /// <summary>An open connection, and when it came from the pool.</summary>
    public readonly record struct Lease(NpgsqlConnection Connection, long FromPool);

    /// <summary>The most recently kept connection, or a new one from the pool; give it back with <see cref="ReturnAsync"/>.</summary>
    public async ValueTask<Lease> RentAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            (Lease Lease, long Since) kept;
            lock (_gate)
            {
                // Counted as waiting in the same step that found none kept: a connection let go from now on goes to the
                // pool, never onto the stack while this waits for the pool (which a full pool would make it do in vain).
                if (!_kept.TryPop(out kept))
                {
                    _waiting++;
                    break;
                }
            }

            if (kept.Lease.Connection.FullState == ConnectionState.Open && Environment.TickCount64 - kept.Since < MaxIdleMilliseconds)
            {
                return kept.Lease;
            }

            await kept.Lease.Connection.DisposeAsync().ConfigureAwait(false);
        }

        try
        {
            return new Lease(await source.OpenConnectionAsync(cancellationToken).ConfigureAwait(false), Environment.TickCount64);
        }
        finally
        {
            lock (_gate)
            {
                _waiting--; // it has one (or gave up)
            }
        }
    }

    /// <summary>
    /// A connection for one held for long or disposed by its user (it goes to the pool then): a kept one if there is
    /// one (never left idle here while its caller waits on a full pool), else the pool's.
    /// </summary>
    public async ValueTask<NpgsqlConnection> OpenAsync(CancellationToken cancellationToken) =>
        (await RentAsync(cancellationToken).ConfigureAwait(false)).Connection;

    /// <summary>
    /// Keeps a connection its user finished with cleanly (<paramref name="clean"/>: everything it ran succeeded, so no
    /// transaction is left, whatever a failed rollback would have left) that is idle and open, while there is room
    /// and nobody waits on the pool; anything else goes back to the pool, which resets what it must.
    /// </summary>
    public ValueTask ReturnAsync(Lease lease, bool clean)
    {
        var now = Environment.TickCount64;
        var keep = clean && lease.Connection.FullState == ConnectionState.Open && now - lease.FromPool < MaxKeptMilliseconds;
        lock (_gate)
        {
            keep = keep && _waiting == 0 && !_disposed && _kept.Count < capacity;
            if (keep)
            {
                _kept.Push((lease, now));
            }
        }

        return keep ? ValueTask.CompletedTask : lease.Connection.DisposeAsync();
    }

    public async ValueTask DisposeAsync()
    {
        (Lease Lease, long Since)[] kept;
        lock (_gate)
        {
            _disposed = true;
            kept = [.. _kept];
            _kept.Clear();
        }

        foreach (var (lease, _) in kept)
        {
            try
            {
                await lease.Connection.DisposeAsync().ConfigureAwait(false);
            }
#pragma warning disable CA1031 // closing: one that fails to close stops none of the others
            catch (Exception)
#pragma warning restore CA1031
            {
            }
        }
    }
}
