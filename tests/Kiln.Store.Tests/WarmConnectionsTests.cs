using System.Data;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Metadata.Postgres;
using Npgsql;

namespace Kiln.Store.Tests;

/// <summary>
/// The connections PostgresMetadataStore keeps warm in front of Npgsql's pool, on the run's real PostgreSQL: one
/// statement after another goes to one server process even after a burst opened many, what is not idle never reaches
/// the next caller, and a full pool still serves everyone who waits for it.
/// </summary>
public sealed class WarmConnectionsTests(PostgresServer server)
{
    private static async Task<int> BackendAsync(WarmConnections warm)
    {
        var lease = await warm.RentAsync(default);
        try
        {
            using var command = new NpgsqlCommand("SELECT pg_backend_pid()", lease.Connection);
            return (int)(await command.ExecuteScalarAsync())!;
        }
        finally
        {
            await warm.ReturnAsync(lease, clean: true);
        }
    }

    // With none kept (capacity 0: every connection goes back to Npgsql's pool), the pool hands its idle connections out
    // oldest first, so statements in turn go round every server process the burst opened: the reason for the stack.
    [Theory]
    [InlineData(4, 1)]
    [InlineData(0, 8)]
    public async Task Statements_one_after_another_go_to_the_same_server_process_after_a_burst_opened_many(int capacity, int processes)
    {
        await using var source = NpgsqlDataSource.Create(server.CreateDatabase());
        await using var warm = new WarmConnections(source, capacity);
        var burst = new List<WarmConnections.Lease>();
        for (var i = 0; i < 8; i++)
        {
            burst.Add(await warm.RentAsync(default));
        }

        foreach (var lease in burst)
        {
            await warm.ReturnAsync(lease, clean: true);
        }

        var seen = new HashSet<int>();
        for (var i = 0; i < 24; i++)
        {
            seen.Add(await BackendAsync(warm));
        }

        Assert.Equal(processes, seen.Count);
    }

    [Fact]
    public async Task A_connection_still_busy_or_closed_is_not_handed_to_the_next_caller()
    {
        await using var source = NpgsqlDataSource.Create(server.CreateDatabase());
        await using var warm = new WarmConnections(source, 4);

        // Given back with a reader still open on it (its user failed to dispose it): to the pool, which cleans it up.
        var busy = await warm.RentAsync(default);
        var command = new NpgsqlCommand("SELECT generate_series(1, 100000)", busy.Connection);
        var reader = await command.ExecuteReaderAsync();
        Assert.True(await reader.ReadAsync());
        await warm.ReturnAsync(busy, clean: true);
        var next = await warm.RentAsync(default);
        Assert.NotSame(busy.Connection, next.Connection);
        await warm.ReturnAsync(next, clean: true);

        // Closed by its user: not kept either; the next caller gets an open one that works.
        var closed = await warm.RentAsync(default);
        Assert.Same(next.Connection, closed.Connection); // the idle one just given back
        await closed.Connection.CloseAsync();
        await warm.ReturnAsync(closed, clean: true);
        Assert.True(await BackendAsync(warm) > 0);
        await reader.DisposeAsync();
        await command.DisposeAsync();

        // Idle and open, but its user failed (a rollback may have failed with it, leaving a transaction open that the
        // connection cannot show): to the pool, which resets it. A transaction is left open here to tell the two apart.
        var failed = await warm.RentAsync(default);
        await using (var begin = new NpgsqlCommand("BEGIN; CREATE TEMP TABLE kiln_probe (a int)", failed.Connection))
        {
            await begin.ExecuteNonQueryAsync();
        }

        await warm.ReturnAsync(failed, clean: false);
        var after = await warm.RentAsync(default);
        await using (var status = new NpgsqlCommand("SELECT to_regclass('pg_temp.kiln_probe') IS NULL", after.Connection))
        {
            Assert.True((bool)(await status.ExecuteScalarAsync())!); // the transaction that made it was rolled back
        }

        Assert.NotSame(failed.Connection, after.Connection);
        await warm.ReturnAsync(after, clean: true);
    }

    [Fact]
    public async Task A_connection_opened_to_be_held_takes_a_kept_one_before_waiting_on_a_full_pool()
    {
        // Two connections in all, one kept idle: a caller that holds its connection (a quota lock) must get the kept
        // one, not wait on the pool for the other while it sits idle (and fail after the pool's timeout of 3 s).
        var database = new NpgsqlConnectionStringBuilder(server.CreateDatabase()) { MaxPoolSize = 2, Timeout = 3 };
        await using var source = NpgsqlDataSource.Create(database.ConnectionString);
        await using var warm = new WarmConnections(source, 1);
        await warm.ReturnAsync(await warm.RentAsync(default), clean: true); // kept
        await using var held = await warm.OpenAsync(default);
        await using var second = await warm.OpenAsync(default).AsTask().WaitAsync(TimeSpan.FromSeconds(2));
        Assert.Equal(ConnectionState.Open, second.State);
    }

    [Fact]
    public async Task A_connection_given_back_while_a_caller_waits_on_a_full_pool_goes_to_that_caller()
    {
        // Two connections in all, one of which may be kept. Both in use, a third caller waits on the pool; the first
        // one given back must reach it. Kept on the stack instead, it would sit idle while the caller waits out the
        // pool's timeout (3 s) and fails.
        var database = new NpgsqlConnectionStringBuilder(server.CreateDatabase()) { MaxPoolSize = 2, Timeout = 3 };
        await using var source = NpgsqlDataSource.Create(database.ConnectionString);
        await using var warm = new WarmConnections(source, 1);
        var first = await warm.RentAsync(default);
        var second = await warm.RentAsync(default);
        var waiting = warm.RentAsync(default).AsTask();
        await Task.Delay(300);
        Assert.False(waiting.IsCompleted);

        var process = first.Connection.ProcessID;
        await warm.ReturnAsync(first, clean: true);
        var third = await waiting.WaitAsync(TimeSpan.FromSeconds(2));
        Assert.Equal(process, third.Connection.ProcessID); // the same server session, through the pool
        await warm.ReturnAsync(third, clean: true);
        await warm.ReturnAsync(second, clean: true);

        // And many callers at once on those two connections all get through.
        await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => Task.Run(async () =>
        {
            for (var i = 0; i < 40; i++)
            {
                await BackendAsync(warm);
            }
        }))).WaitAsync(TimeSpan.FromSeconds(60));
    }
}
