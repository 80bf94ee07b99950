using Kiln.Store.Gc;
using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

/// <summary>
/// The collector's lock within one process, over a stand-in for the database's lock that counts how often it is taken
/// and says whether another process waits for it (PostgreSQL's own behaviour is tested in PostgresMetadataTests): a
/// registration joins the ones in flight unless a collection elsewhere waits, in which case it waits for them to end
/// and takes the database's lock again.
/// </summary>
public sealed class GcLockTests
{
    private sealed class DatabaseLock : ICollectionLock
    {
        public Func<bool> Awaited { get; set; } = () => false;

        public int Released { get; private set; }

        public Task<bool> IsAwaitedAsync(CancellationToken cancellationToken) => Task.FromResult(Awaited());

        public ValueTask DisposeAsync()
        {
            Released++;
            return ValueTask.CompletedTask;
        }
    }

    private sealed class Database
    {
        public List<(bool Exclusive, DatabaseLock Lock)> Taken { get; } = [];

        public Func<bool> Awaited { get; set; } = () => false;

        public Task<ICollectionLock?> LockAsync(bool exclusive, CancellationToken cancellationToken)
        {
            var held = new DatabaseLock { Awaited = () => Awaited() };
            Taken.Add((exclusive, held));
            return Task.FromResult<ICollectionLock?>(held);
        }
    }

    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task Registrations_share_one_database_lock_while_nobody_waits_for_it()
    {
        var database = new Database();
        using var gcLock = new GcLock(database.LockAsync, TimeSpan.Zero, linger: TimeSpan.Zero);
        var first = await gcLock.SharedAsync(default);
        var second = await gcLock.SharedAsync(default).WaitAsync(Patience); // joins while the first is in flight
        await first.DisposeAsync();
        var third = await gcLock.SharedAsync(default).WaitAsync(Patience);
        Assert.Equal([false], database.Taken.Select(t => t.Exclusive));
        await second.DisposeAsync();
        await third.DisposeAsync();
        Assert.Equal(1, database.Taken[0].Lock.Released);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_registration_waits_for_those_in_flight_and_takes_the_lock_again_when_a_collection_elsewhere_waits(bool askingFails)
    {
        var database = new Database();
        using var gcLock = new GcLock(database.LockAsync, TimeSpan.Zero, linger: TimeSpan.FromHours(1)) /* no linger when one waits */;
        var first = await gcLock.SharedAsync(default);
        database.Awaited = () => askingFails ? throw new InvalidOperationException("the lock's session broke") : true;

        var second = gcLock.SharedAsync(default);
        await Task.Delay(200);
        Assert.False(second.IsCompleted); // it does not join: the database's lock is to be let go
        await first.DisposeAsync();
        var held = await second.WaitAsync(Patience);
        Assert.Equal(2, database.Taken.Count);
        Assert.Equal(1, database.Taken[0].Lock.Released);
        Assert.Equal(0, database.Taken[1].Lock.Released);
        await held.DisposeAsync();
    }

    // Kept a while after the last registration: the next one takes it over, without a round trip to the database; a
    // collection here, or one elsewhere seen waiting, ends the linger at once; otherwise it ends by itself.
    [Fact]
    public async Task The_database_lock_lingers_for_the_next_registration_until_a_collection_wants_it()
    {
        var database = new Database();
        using var gcLock = new GcLock(database.LockAsync, TimeSpan.Zero, linger: TimeSpan.FromHours(1));
        await (await gcLock.SharedAsync(default)).DisposeAsync();
        await (await gcLock.SharedAsync(default)).DisposeAsync();
        Assert.Single(database.Taken);
        Assert.Equal(0, database.Taken[0].Lock.Released);

        await using (var collection = await gcLock.ExclusiveAsync(default).WaitAsync(Patience))
        {
            Assert.Equal(1, database.Taken[0].Lock.Released);
            Assert.Equal([false, true], database.Taken.Select(t => t.Exclusive));
        }

        // A collection elsewhere waits: the lingering lock goes, and is asked for again.
        await (await gcLock.SharedAsync(default)).DisposeAsync();
        database.Awaited = () => true;
        await using (var again = await gcLock.SharedAsync(default).WaitAsync(Patience))
        {
            Assert.Equal(4, database.Taken.Count);
            Assert.Equal(1, database.Taken[2].Lock.Released);
        }
    }

    // The number of the shared hold in force: the same across registrations that overlap or follow within the linger,
    // none while nothing holds the lock, and a new one after any break (a collection here, or a linger that ended) —
    // so the same number at two moments proves no collection ran between them.
    [Fact]
    public async Task A_shared_hold_keeps_its_number_until_the_lock_is_let_go()
    {
        var database = new Database();
        using var gcLock = new GcLock(database.LockAsync, TimeSpan.Zero, linger: TimeSpan.FromHours(1));
        Assert.Null(gcLock.SharedPeriod);
        var first = await gcLock.SharedAsync(default);
        var period = gcLock.SharedPeriod;
        Assert.NotNull(period);
        var second = await gcLock.SharedAsync(default);
        await first.DisposeAsync();
        Assert.Equal(period, gcLock.SharedPeriod);
        await second.DisposeAsync();
        Assert.Equal(period, gcLock.SharedPeriod); // lingering: still held
        await (await gcLock.SharedAsync(default)).DisposeAsync();
        Assert.Equal(period, gcLock.SharedPeriod);

        await (await gcLock.ExclusiveAsync(default).WaitAsync(Patience)).DisposeAsync();
        Assert.Null(gcLock.SharedPeriod);
        await using (await gcLock.SharedAsync(default))
        {
            Assert.NotNull(gcLock.SharedPeriod);
            Assert.NotEqual(period, gcLock.SharedPeriod);
            period = gcLock.SharedPeriod;
        }

        await gcLock.StopLingeringAsync();
        Assert.Null(gcLock.SharedPeriod);
        await using (await gcLock.SharedAsync(default))
        {
            Assert.NotEqual(period, gcLock.SharedPeriod);
        }
    }

    // A collection here that waits for a registration in flight gets the lock when it ends: no linger after it.
    [Fact]
    public async Task A_collection_waiting_for_a_registration_gets_the_lock_when_it_ends()
    {
        var database = new Database();
        using var gcLock = new GcLock(database.LockAsync, TimeSpan.Zero, linger: TimeSpan.FromHours(1));
        var registration = await gcLock.SharedAsync(default);
        var collection = gcLock.ExclusiveAsync(default);
        await Task.Delay(200);
        Assert.False(collection.IsCompleted);
        await registration.DisposeAsync();
        await using var held = await collection.WaitAsync(Patience);
        Assert.Equal(1, database.Taken[0].Lock.Released);
    }

    [Fact]
    public async Task A_lingering_database_lock_goes_by_itself()
    {
        var database = new Database();
        using var gcLock = new GcLock(database.LockAsync, TimeSpan.Zero, linger: TimeSpan.FromMilliseconds(50));
        await (await gcLock.SharedAsync(default)).DisposeAsync();
        var deadline = DateTime.UtcNow + Patience;
        while (database.Taken[0].Lock.Released == 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the lingering lock was never let go");
            await Task.Delay(20);
        }

        Assert.Equal(1, database.Taken[0].Lock.Released);
        await using var exclusive = await gcLock.ExclusiveAsync(default).WaitAsync(Patience); // and this process's own too
    }

    [Fact]
    public async Task What_the_holders_owe_the_database_is_written_before_each_shared_hold_of_its_lock_ends_and_only_then()
    {
        var database = new Database();
        using var gcLock = new GcLock(database.LockAsync, TimeSpan.Zero, linger: TimeSpan.FromHours(1));
        var written = new List<int>(); // how many of the database's locks were let go when it was called
        gcLock.BeforeLettingGo(() =>
        {
            written.Add(database.Taken.Sum(t => t.Lock.Released));
            return Task.CompletedTask;
        });

        for (var i = 0; i < 3; i++)
        {
            await (await gcLock.SharedAsync(default)).DisposeAsync(); // one hold, lingering between them
        }

        Assert.Empty(written);
        await (await gcLock.ExclusiveAsync(default).WaitAsync(Patience)).DisposeAsync(); // ends the linger, then collects
        Assert.Equal([0], written); // once, before the shared hold was let go; not for the exclusive one
        Assert.Equal([false, true], database.Taken.Select(t => t.Exclusive));
        Assert.All(database.Taken, t => Assert.Equal(1, t.Lock.Released));
    }

    [Fact]
    public async Task A_registration_asks_at_most_once_per_interval()
    {
        var database = new Database();
        var asked = 0;
        database.Awaited = () =>
        {
            asked++;
            return false;
        };
        using var gcLock = new GcLock(database.LockAsync, TimeSpan.FromHours(1), linger: TimeSpan.Zero);
        var holders = new List<GcLock.Holder>();
        for (var i = 0; i < 10; i++)
        {
            holders.Add(await gcLock.SharedAsync(default));
        }

        Assert.Equal(0, asked);
        foreach (var holder in holders)
        {
            await holder.DisposeAsync();
        }
    }
}
