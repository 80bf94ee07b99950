using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;
using Kiln.Store.Gc;

namespace Kiln.Store.Tests;

/// <summary>
/// Two stores as two front doors (each its own data directory) on one database and one real S3 bucket (s3rver): a
/// compressed NAR kept through one is served by the other, and when the collector of either takes the path, its NAR,
/// and the kept file go from the bucket. On PostgreSQL (a real one), a collection through one front door holds off
/// registrations through the other, and spares what the other registered within the grace period (its sessions'
/// temporary roots are not visible here).
/// </summary>
public sealed class SharedStoreTests(S3Server s3, PostgresServer postgres) : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private KilnStore _a = null!, _b = null!;
    private string _bucket = null!;

    private static readonly byte[] HelloNar = File.ReadAllBytes(Repo.Golden("nar", "hello.txt.nar"));

    public async ValueTask InitializeAsync()
    {
        _bucket = s3.NewLocation();
        var database = "sqlite://" + _temp["shared.db"];
        _a = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["a"], MetadataUrl = database, BlobStoreUrl = _bucket }, default);
        _b = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["b"], MetadataUrl = database, BlobStoreUrl = _bucket }, default);
    }

    public async ValueTask DisposeAsync()
    {
        await _a.DisposeAsync();
        await _b.DisposeAsync();
        _temp.Dispose();
    }

    // A front door of its own data directory on the shared database and bucket.
    private Task<KilnStore> OpenFrontDoorAsync(string name, string database, string bucket) =>
        KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp[name], MetadataUrl = database, BlobStoreUrl = bucket }, default);

    // Every path registered an hour ago (as if), out of the grace a collection gives recent registrations.
    private void AgeRegistrations(string database) =>
        postgres.Sql(new Npgsql.NpgsqlConnectionStringBuilder(database).Database!,
            $"UPDATE paths SET registration_time = {DateTimeOffset.UtcNow.AddHours(-1).ToUnixTimeSeconds()}");

    // `kiln store verify` (and a client's `nix store verify --check-contents`) on shared backends checks the bucket's
    // copy: a front door whose local cache holds the blob whole still finds the bucket's damaged, and one that never
    // read it reports the damage as that blob's problem instead of stopping at it.
    [Fact]
    public async Task Verification_checks_the_buckets_copy_and_reports_its_damage()
    {
        using (var view = await _a.OpenViewAsync("alice", default))
        {
            await view.AddToStoreAsync(StoreTests.Declared(MetadataContract.P("verified"), HelloNar), new MemoryStream(HelloNar), false, true, default);
        }

        Assert.Empty((await StoreMaintenance.VerifyAllAsync(_a, _ => { }, default)).Problems);
        var narHash = NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar).ToNix32();
        var file = s3.ObjectFiles(_bucket).Single(f => f.Contains(narHash, StringComparison.Ordinal));
        var bytes = File.ReadAllBytes(file);
        bytes[^20] ^= 1;
        File.WriteAllBytes(file, bytes);

        foreach (var store in new[] { _a, _b })
        {
            var report = await StoreMaintenance.VerifyAllAsync(store, _ => { }, default);
            // s3rver keeps each object's MD5, which the SDK checks a body against: the damage is found there.
            Assert.Contains(report.Problems, p => p.StartsWith($"blob {narHash} is corrupt: the bucket's copy fails", StringComparison.Ordinal));
            var log = new ListLog();
            using var view = await store.OpenViewAsync("alice", default);
            Assert.True(await view.VerifyStoreAsync(true, false, log, default));
            Assert.Contains(log.Lines, l => l.Contains("was modified", StringComparison.Ordinal));
            var bucketName = new Uri(_bucket).Host;
            Assert.DoesNotContain(log.Lines, l => l.Contains("127.0.0.1", StringComparison.Ordinal) || l.Contains(bucketName, StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task A_file_kept_through_one_front_door_is_served_by_the_other_and_collected_from_the_bucket()
    {
        var path = MetadataContract.P("hello");
        var compressed = "not really xz, but what the client sent"u8.ToArray();
        var name = NixHash.Compute(NixHashAlgorithm.Sha256, compressed).ToNix32() + ".nar.xz";
        var narHash = NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar);
        using (var view = await _a.OpenViewAsync("alice", default))
        {
            await view.AddToStoreAsync(new ValidPathInfo { Path = path, NarHash = narHash, NarSize = HelloNar.Length }, new MemoryStream(HelloNar), false, true, default);
            Assert.True(await view.KeepNarFileAsync(name, narHash, "xz", new MemoryStream(compressed), default));
        }

        Assert.Contains(s3.ObjectFiles(_bucket), f => f.Contains("nar-files", StringComparison.Ordinal) && f.Contains(name, StringComparison.Ordinal));
        using (var view = await _b.OpenViewAsync("alice", default))
        {
            await using var kept = (await view.OpenKeptNarFileAsync(name, default))!;
            using var copy = new MemoryStream();
            await (await kept.OpenStreamAsync(default)).CopyToAsync(copy);
            Assert.Equal(compressed, copy.ToArray());
        }

        // Another account may not read it through either front door (it has no path with that NAR).
        using (var view = await _b.OpenViewAsync("mallory", default))
        {
            Assert.Null(await view.OpenKeptNarFileAsync(name, default));
        }

        using (var gc = await _b.OpenViewAsync("alice", default))
        {
            var result = await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteSpecific, new HashSet<StorePath> { path }, 0), default);
            Assert.Equal([path], result.Paths);
        }

        Assert.DoesNotContain(s3.ObjectFiles(_bucket), f => f.Contains(name, StringComparison.Ordinal) || f.Contains(narHash.ToNix32(), StringComparison.Ordinal));
        using (var view = await _a.OpenViewAsync("alice", default))
        {
            Assert.Null(await view.OpenKeptNarFileAsync(name, default));
        }

        // A's own copy outlived B's collection (not served: the metadata says it is gone). A's prune takes it once it
        // is older than the grace period, and leaves a kept file the metadata still names, however old.
        var leftover = Path.Combine(_temp["a"], "nar-files", name);
        Assert.True(File.Exists(leftover));
        var other = "another client's file"u8.ToArray();
        var otherName = NixHash.Compute(NixHashAlgorithm.Sha256, other).ToNix32() + ".nar.zst";
        using (var view = await _a.OpenViewAsync("alice", default))
        {
            await view.AddToStoreAsync(new ValidPathInfo { Path = path, NarHash = narHash, NarSize = HelloNar.Length }, new MemoryStream(HelloNar), false, true, default);
            Assert.True(await view.KeepNarFileAsync(otherName, narHash, "zstd", new MemoryStream(other), default));
        }

        Assert.Equal((0, 0), await _a.PruneLocalCopiesAsync(default)); // within the grace period
        foreach (var file in Directory.GetFiles(Path.Combine(_temp["a"], "nar-files")))
        {
            File.SetLastWriteTimeUtc(file, DateTime.UtcNow.AddHours(-1));
        }

        Assert.Equal((1, 0), await _a.PruneLocalCopiesAsync(default));
        Assert.False(File.Exists(leftover));
        Assert.True(File.Exists(Path.Combine(_temp["a"], "nar-files", otherName)));
    }

    // The port as the server fills it from max-storage.
    private sealed class Quota(long bytes) : IAccountPolicy
    {
        public Task<long> MaxStorageAsync(long account, CancellationToken cancellationToken) => Task.FromResult(bytes);

        public Task<TimeSpan> RetentionAsync(long account, CancellationToken cancellationToken) => Task.FromResult(TimeSpan.Zero);
    }

    // max-storage across front doors: a commit holds the account's quota lock in the database from its look at the
    // quota until its paths are registered. An upload through B waits while a commit through A holds it, then counts
    // what A registered, and is refused.
    [Fact]
    public async Task An_upload_through_one_front_door_waits_for_the_accounts_commit_through_another_and_counts_it()
    {
        var (database, bucket) = (postgres.CreateDatabase(), s3.NewLocation());
        await using var a = await OpenFrontDoorAsync("qa", database, bucket);
        await using var b = await OpenFrontDoorAsync("qb", database, bucket);
        var alice = await a.Accounts.GetOrCreateAccountAsync("alice", default);
        b.AccountPolicy = new Quota(HelloNar.Length * 3 / 2); // room for one hello-sized NAR, not two
        var narHash = NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar);

        using var viewB = await b.OpenViewAsync("alice", default);
        Task upload;
        await using (var commitThroughA = (await a.Metadata.HoldStorageQuotaAsync(alice, default))!)
        {
            upload = viewB.AddToStoreAsync(new ValidPathInfo { Path = MetadataContract.P("through-b"), NarHash = narHash, NarSize = HelloNar.Length },
                new MemoryStream(HelloNar), false, true, default);
            await Task.Delay(500);
            Assert.False(upload.IsCompleted); // waiting for A's commit

            await a.Metadata.RegisterAsync(alice, [MetadataContract.New(new ValidPathInfo { Path = MetadataContract.P("through-a"), NarHash = narHash, NarSize = HelloNar.Length })], default);
        }

        var refused = await Assert.ThrowsAsync<Kiln.Protocol.KilnException>(() => upload.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(Kiln.Protocol.ErrorKind.TooLarge, refused.Kind);
        Assert.Empty(await viewB.QueryValidPathsAsync([MetadataContract.P("through-b")], default));

        // SQLite has one writing process: its lock per account in the process is the whole of it.
        Assert.Null(await _a.Metadata.HoldStorageQuotaAsync(alice, default));
    }

    // The bucket's objects holding any of these NARs.
    private int InBucket(params byte[][] nars) =>
        s3.ObjectFiles(_bucket).Count(f => nars.Any(n => f.Contains(NixHash.Compute(NixHashAlgorithm.Sha256, n).ToNix32(), StringComparison.Ordinal)));

    private async Task UntilInBucketAsync(int count, params byte[][] nars)
    {
        for (var waited = 0; InBucket(nars) != count; waited += 50)
        {
            Assert.True(waited < 10_000, $"{InBucket(nars)} of the batch's NARs in the bucket, not {count}");
            await Task.Delay(50);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_batchs_blobs_go_into_the_bucket_as_they_arrive_and_one_swept_before_the_commit_is_sent_again(bool shippedUnderTheLock)
    {
        // AddMultipleToStore ships each verified NAR while the next are received, before the commit takes the
        // collection lock. So the sweep of unnamed blobs may delete one in between: the commit, under the lock, finds
        // it gone and sends it again (from its spool file, which the sweep's cleaning of old temporary files spares),
        // or the path would be registered without its NAR. The sweep here is this front door's own, which cleans. A
        // commit trusts what was shipped only while one hold of the lock has lasted since the ship began (a session's
        // temporary roots usually keep it held): here the lock is held while the batch ships, as they would, and then
        // let go for the sweep, so the commit must look again.
        var (hello, tree) = (MetadataContract.P("shipped-hello"), MetadataContract.P("shipped-tree"));
        using (var view = await _a.OpenViewAsync("alice", default))
        {
            await using var batch = view.BeginUploads(false, true);
            var hold = shippedUnderTheLock ? await _a.GcLock.SharedAsync(default) : null;
            await batch.AddAsync(StoreTests.Declared(hello, HelloNar), new MemoryStream(HelloNar), default);
            await batch.AddAsync(StoreTests.Declared(tree, StoreTests.TreeNar), new MemoryStream(StoreTests.TreeNar), default);
            await UntilInBucketAsync(2, HelloNar, StoreTests.TreeNar);
            Assert.Empty(await view.QueryValidPathsAsync([hello, tree], default));
            if (hold is not null)
            {
                await hold.DisposeAsync();
            }

            Assert.Equal(2, await _a.SweepUnnamedBlobsAsync(TimeSpan.Zero, default));
            Assert.Equal(0, InBucket(HelloNar, StoreTests.TreeNar));
            await batch.CommitAsync(default);
        }

        // Through the other front door (nothing in its local cache): both read back whole from the bucket.
        using var other = await _b.OpenViewAsync("alice", default);
        foreach (var (path, nar) in new[] { (hello, HelloNar), (tree, StoreTests.TreeNar) })
        {
            await using var read = await other.OpenNarAsync(path, default);
            Assert.NotNull(read);
            using var bytes = new MemoryStream();
            await read.Content.CopyToAsync(bytes);
            Assert.Equal(nar, bytes.ToArray());
        }
    }

    [Fact]
    public async Task A_batch_never_committed_registers_nothing_and_deletes_what_it_shipped()
    {
        // A client that sends and never commits does not keep the bucket filled for the sweep's grace period.
        var (path, named) = (MetadataContract.P("abandoned"), MetadataContract.P("named"));
        using (var view = await _a.OpenViewAsync("alice", default))
        {
            var batch = view.BeginUploads(false, true);
            await batch.AddAsync(StoreTests.Declared(path, StoreTests.TreeNar), new MemoryStream(StoreTests.TreeNar), default);
            await batch.AddAsync(StoreTests.Declared(named, HelloNar), new MemoryStream(HelloNar), default);
            await UntilInBucketAsync(2, StoreTests.TreeNar, HelloNar);

            // Meanwhile another account stores the same content as one of them: that one is named, and stays.
            using (var bob = await _b.OpenViewAsync("bob", default))
            {
                await bob.AddToStoreAsync(StoreTests.Declared(named, HelloNar), new MemoryStream(HelloNar), false, true, default);
            }

            await batch.DisposeAsync();
            await batch.DisposeAsync(); // twice is harmless
            Assert.Empty(await view.QueryValidPathsAsync([path, named], default));
        }

        Assert.Equal(0, InBucket(StoreTests.TreeNar));
        Assert.Equal(1, InBucket(HelloNar));
        Assert.Empty(Directory.EnumerateFiles(_temp["a"], "*.tmp", SearchOption.AllDirectories)); // its spool files went with it
    }

    [Fact]
    public async Task A_collection_on_one_front_door_holds_off_the_others_registrations_and_spares_their_recent_paths()
    {
        var (database, bucket) = (postgres.CreateDatabase(), s3.NewLocation());
        await using var a = await OpenFrontDoorAsync("pa", database, bucket);
        await using var b = await OpenFrontDoorAsync("pb", database, bucket);
        var narHash = NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar);
        var old = MetadataContract.P("old");
        var fresh = MetadataContract.P("fresh");
        var account = await a.Accounts.GetOrCreateAccountAsync("alice", default);
        using (var view = await a.OpenViewAsync("alice", default))
        {
            await view.AddToStoreAsync(new ValidPathInfo { Path = old, NarHash = narHash, NarSize = HelloNar.Length }, new MemoryStream(HelloNar), false, true, default);
        }

        // Registered long ago (as if), so only its missing roots decide.
        AgeRegistrations(database);

        // While a collection through A holds the lock, an upload through B waits; then it goes in.
        Task upload;
        using var viewB = await b.OpenViewAsync("alice", default);
        var holder = await a.GcLock.ExclusiveAsync(default);
        await using (holder)
        {
            Assert.True(holder.AcrossProcesses);
            upload = viewB.AddToStoreAsync(new ValidPathInfo { Path = fresh, NarHash = narHash, NarSize = HelloNar.Length }, new MemoryStream(HelloNar), false, true, default);
            await Task.Delay(500);
            Assert.False(upload.IsCompleted, "a registration went in during another front door's collection");
        }

        await upload;

        // A's collection takes the old path and spares the one B just registered (and B's session still holds).
        using (var gc = await a.OpenViewAsync("alice", default))
        {
            var result = await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default);
            Assert.Equal([old], result.Paths);
        }

        Assert.Equal([fresh], await a.Metadata.GetAllPathsAsync(account, default));
        Assert.Contains(s3.ObjectFiles(bucket), f => f.Contains(narHash.ToNix32(), StringComparison.Ordinal)); // still named by 'fresh'
    }

    // Two front doors on one database and bucket, sharing temporary roots, and alice's 'held' and 'loose' registered
    // long ago (as if): the grace for recent registrations does not cover them; only roots do.
    private async Task<(string Database, KilnStore A, KilnStore B, long Account, StorePath Held, StorePath Loose)> TwoDoorsWithOldPathsAsync(string prefix)
    {
        var (database, bucket) = (postgres.CreateDatabase(), s3.NewLocation());
        var a = await OpenFrontDoorAsync(prefix + "a", database, bucket);
        var b = await OpenFrontDoorAsync(prefix + "b", database, bucket);
        await a.ShareTempRootsAsync("door-a", default);
        await b.ShareTempRootsAsync("door-b", default);
        var narHash = NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar);
        var (held, loose) = (MetadataContract.P("held"), MetadataContract.P("loose"));
        var account = await a.Accounts.GetOrCreateAccountAsync("alice", default);
        using (var view = await a.OpenViewAsync("alice", default))
        {
            foreach (var path in new[] { held, loose })
            {
                await view.AddToStoreAsync(new ValidPathInfo { Path = path, NarHash = narHash, NarSize = HelloNar.Length }, new MemoryStream(HelloNar), false, true, default);
            }
        }

        AgeRegistrations(database);
        return (database, a, b, account, held, loose);
    }

    [Fact]
    public async Task A_temporary_root_taken_on_one_front_door_just_before_a_collection_on_another_is_spared()
    {
        // B answers at once and writes the root when its hold of the collection lock ends, which A's collection waits for.
        var (database, a, b, account, held, loose) = await TwoDoorsWithOldPathsAsync("j");
        await using var doorA = a;
        await using var doorB = b;
        using var viewB = await b.OpenViewAsync("alice", default);
        await viewB.AddTempRootAsync(held, default);
        using (var gc = await a.OpenViewAsync("alice", default))
        {
            var result = await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default);
            Assert.Equal([loose], result.Paths);
        }

        Assert.Equal([held], await a.Metadata.GetAllPathsAsync(account, default));
        Assert.Equal([held], await a.Metadata.GetTempRootsAsync(account, "door-a", default));
    }

    [Fact]
    public async Task A_root_is_written_soon_while_its_hold_of_the_lock_lasts_so_a_lock_lost_later_exposes_nothing()
    {
        var (database, a, b, account, held, loose) = await TwoDoorsWithOldPathsAsync("l");
        await using var doorA = a;
        await using var doorB = b;

        // B's hold lasts (a registration in flight, as on a busy front door), and the root is written all the same.
        await using var inFlight = await b.GcLock.SharedAsync(default);
        using var viewB = await b.OpenViewAsync("alice", default);
        await viewB.AddTempRootAsync(held, default);
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while ((await a.Metadata.GetTempRootsAsync(account, "door-a", default)).Count == 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the root was not written while the hold lasted");
            await Task.Delay(20);
        }

        // Then the database drops B's lock (its session killed): A collects at once, while B still counts on the lock.
        var name = new Npgsql.NpgsqlConnectionStringBuilder(database).Database!;
        postgres.Sql(name, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted");
        using (var gc = await a.OpenViewAsync("alice", default))
        {
            var result = await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default).WaitAsync(TimeSpan.FromSeconds(60));
            Assert.Equal([loose], result.Paths);
        }

        Assert.Equal([held], await a.Metadata.GetAllPathsAsync(account, default));
    }

    [Fact]
    public async Task Temporary_roots_the_database_refused_are_written_when_the_next_hold_of_the_lock_ends()
    {
        var (database, bucket) = (postgres.CreateDatabase(), s3.NewLocation());
        await using var a = await OpenFrontDoorAsync("ra", database, bucket);
        await using var b = await OpenFrontDoorAsync("rb", database, bucket);
        await a.ShareTempRootsAsync("door-a", default);
        await b.ShareTempRootsAsync("door-b", default);
        var account = await a.Accounts.GetOrCreateAccountAsync("alice", default);
        var (first, second) = (MetadataContract.P("first"), MetadataContract.P("second"));
        var name = new Npgsql.NpgsqlConnectionStringBuilder(database).Database!;
        async Task HoldEndedOnB() => await (await a.GcLock.ExclusiveAsync(default).WaitAsync(TimeSpan.FromSeconds(60))).DisposeAsync();

        // The database refuses every new row (a real failure: PostgreSQL's own check, not a stand-in).
        postgres.Sql(name, "ALTER TABLE temp_roots ADD CONSTRAINT refuse_all CHECK (false) NOT VALID");
        using var viewB = await b.OpenViewAsync("alice", default);
        await viewB.AddTempRootAsync(first, default);
        await HoldEndedOnB();
        Assert.Empty(await a.Metadata.GetTempRootsAsync(account, "door-a", default));

        postgres.Sql(name, "ALTER TABLE temp_roots DROP CONSTRAINT refuse_all");
        await viewB.AddTempRootAsync(second, default);
        await HoldEndedOnB();
        Assert.Equal(new[] { first, second }.Order(), (await a.Metadata.GetTempRootsAsync(account, "door-a", default)).Order());
    }

    [Fact]
    public async Task A_collection_on_one_front_door_spares_what_a_session_on_another_holds_as_temporary_roots_until_it_ends()
    {
        var (database, a, b, account, held, loose) = await TwoDoorsWithOldPathsAsync("t");
        await using var doorA = a;
        await using var doorB = b;

        // A session through B holds 'held' (as a client's AddTempRoot, or a build's input, would): never in the middle of
        // a collection through A (it waits for its end), and A's next collection spares it.
        var viewB = await b.OpenViewAsync("alice", default);
        Task holding;
        var collecting = await a.GcLock.ExclusiveAsync(default);
        await using (collecting)
        {
            holding = viewB.AddTempRootAsync(held, default);
            await Task.Delay(300);
            Assert.False(holding.IsCompleted, "a temporary root was published during another front door's collection");
        }

        await holding;
        using (var gc = await a.OpenViewAsync("alice", default))
        {
            var result = await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default);
            Assert.Equal([loose], result.Paths);
        }

        Assert.Equal([held], await a.Metadata.GetAllPathsAsync(account, default));

        // B's lease lapses (B went away, as if): its roots no longer count; renewed, they do again.
        var name = new Npgsql.NpgsqlConnectionStringBuilder(database).Database!;
        postgres.Sql(name, "UPDATE temp_root_doors SET expires = 0 WHERE front_door = 'door-b'");
        Assert.Empty(await a.Metadata.GetTempRootsAsync(account, "door-a", default));
        await a.Metadata.RenewTempRootsAsync("door-b", TempRoots.Lease, default);
        Assert.Equal([held], await a.Metadata.GetTempRootsAsync(account, "door-a", default));

        // The session ends: its roots are withdrawn, and the next collection takes the path.
        viewB.Dispose();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while ((await a.Metadata.GetTempRootsAsync(account, "door-a", default)).Count > 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the ended session's temporary roots were never withdrawn");
            await Task.Delay(50);
        }

        using (var gc = await a.OpenViewAsync("alice", default))
        {
            var result = await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default);
            Assert.Equal([held], result.Paths);
        }
    }
}
