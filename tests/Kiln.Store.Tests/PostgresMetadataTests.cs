using Kiln.Nix.Tests.Support;
using Kiln.Store.Metadata;

[assembly: AssemblyFixture(typeof(PostgresServer))]

namespace Kiln.Store.Tests;

/// <summary>
/// A fresh database per test on the run's private PostgreSQL cluster, opened the way Kiln opens one (by its
/// connection string); the database goes when the cluster does.
/// </summary>
internal sealed class PostgresStores(PostgresServer server)
{
    public async Task<IMetadataStore> CreateAsync()
    {
        var store = MetadataStores.Open(server.CreateDatabase());
        await store.MigrateAsync(default);
        return store;
    }
}

public sealed class PostgresAccountMetadataTests(PostgresServer server) : AccountMetadataContract
{
    protected override Task<IMetadataStore> CreateAsync() => new PostgresStores(server).CreateAsync();
}

public sealed class PostgresSettingsMetadataTests(PostgresServer server) : SettingsMetadataContract
{
    protected override Task<IMetadataStore> CreateAsync() => new PostgresStores(server).CreateAsync();
}

public sealed class PostgresPathMetadataTests(PostgresServer server) : PathMetadataContract
{
    protected override Task<IMetadataStore> CreateAsync() => new PostgresStores(server).CreateAsync();
}

public sealed class PostgresBuildMetadataTests(PostgresServer server) : BuildMetadataContract
{
    protected override Task<IMetadataStore> CreateAsync() => new PostgresStores(server).CreateAsync();
}

public sealed class PostgresAgentMetadataTests(PostgresServer server) : AgentMetadataContract
{
    protected override Task<IMetadataStore> CreateAsync() => new PostgresStores(server).CreateAsync();
}

public sealed class PostgresPushMetadataTests(PostgresServer server) : PushMetadataContract
{
    protected override Task<IMetadataStore> CreateAsync() => new PostgresStores(server).CreateAsync();
}

/// <summary>What is PostgreSQL's own: migrations under a lock, the version across processes, failures, connection forms.</summary>
public sealed class PostgresMetadataStoreTests(PostgresServer server) : IDisposable
{
    private readonly TempDir _temp = new();

    // Every many-path query is one round trip however many paths it names (arrays and unnest, not a statement per
    // path): counted as the commands Npgsql runs against this test's database while each call runs.
    [Fact]
    public async Task A_many_path_query_is_one_command_whatever_the_number_of_paths()
    {
        var database = server.CreateDatabase();
        var name = new Npgsql.NpgsqlConnectionStringBuilder(database).Database!;
        await using var store = MetadataStores.Open(database);
        await store.MigrateAsync(default);
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var chain = new List<NewPath>();
        for (var i = 0; i < 300; i++)
        {
            var path = MetadataContract.P($"chain-{i}");
            chain.Add(MetadataContract.New(i == 0 ? MetadataContract.Info(path) : MetadataContract.Info(path, chain[^1].Info.Path)));
        }

        await store.RegisterAsync(alice, chain, default);
        var commands = new System.Collections.Concurrent.ConcurrentQueue<string>();
        using var listener = new System.Diagnostics.ActivityListener
        {
            ShouldListenTo = source => source.Name == "Npgsql",
            Sample = (ref System.Diagnostics.ActivityCreationOptions<System.Diagnostics.ActivityContext> _) => System.Diagnostics.ActivitySamplingResult.AllData,
            ActivityStopped = activity =>
            {
                if (activity.TagObjects.Any(t => t.Value is string value && value.Contains(name, StringComparison.Ordinal)))
                {
                    commands.Enqueue(activity.DisplayName);
                }
            },
        };
        System.Diagnostics.ActivitySource.AddActivityListener(listener);
        async Task<int> CommandsAsync(Func<Task> call)
        {
            commands.Clear();
            await call();
            return commands.Count;
        }

        var paths = chain.Select(p => p.Info.Path).ToList();
        Assert.Equal(1, await CommandsAsync(async () => Assert.Equal(300, (await store.GetPathsAsync(alice, paths, default)).Count)));
        Assert.Equal(1, await CommandsAsync(async () => Assert.Equal(300, (await store.GetClosureAsync(alice, [paths[^1]], default)).Count)));
        Assert.Equal(1, await CommandsAsync(async () => Assert.Equal(3, (await store.GetPathsAsync(alice, paths.Take(3).ToList(), default)).Count)));
    }

    [Fact]
    public async Task Front_doors_starting_at_once_migrate_once()
    {
        var database = server.CreateDatabase();
        var stores = Enumerable.Range(0, 4).Select(_ => MetadataStores.Open(database)).ToList();
        try
        {
            await Task.WhenAll(stores.Select(s => s.MigrateAsync(default)));
            var name = new Npgsql.NpgsqlConnectionStringBuilder(database).Database!;
            var migrations = Kiln.Store.Metadata.MetadataRows.Migrations("Kiln.Store.Postgres.").Count();
            Assert.Equal($"{migrations}|{migrations}", server.Sql(name, "SELECT count(*) || '|' || count(DISTINCT version) FROM schema_migrations").Trim());

            // And a second start finds nothing to do.
            await stores[0].MigrateAsync(default);
            Assert.Equal(migrations.ToString(System.Globalization.CultureInfo.InvariantCulture), server.Sql(name, "SELECT count(*) FROM schema_migrations").Trim());
        }
        finally
        {
            foreach (var store in stores)
            {
                await store.DisposeAsync();
            }
        }
    }

    // Statements prepared after their second use and no DISCARD ALL per pooled use, unless the operator said otherwise
    // (found as every statement parsed and planned again: a connection string builder answers "yes" for any keyword).
    [Fact]
    public void Kiln_prepares_statements_and_keeps_sessions_unless_told_otherwise()
    {
        var plain = Kiln.Store.Metadata.Postgres.PostgresMetadataStore.Settings("Host=db;Database=kiln;Username=kiln", readOnly: false);
        Assert.Equal((64, 2, true), (plain.MaxAutoPrepare, plain.AutoPrepareMinUsages, plain.NoResetOnClose));
        var told = Kiln.Store.Metadata.Postgres.PostgresMetadataStore.Settings("Host=db;Database=kiln;Max Auto Prepare=0;NoResetOnClose=false", readOnly: true);
        Assert.Equal((0, false), (told.MaxAutoPrepare, told.NoResetOnClose));
        Assert.Contains("default_transaction_read_only=on", told.Options, StringComparison.Ordinal);
    }

    // Single statements go without a transaction around them (one round trip, not two) only where their implicit
    // transaction is READ COMMITTED, as the explicit ones are; on a database whose default is stricter they get one.
    [Fact]
    public async Task Single_statements_go_without_a_transaction_only_where_the_default_is_read_committed()
    {
        var strict = server.CreateDatabase();
        var name = new Npgsql.NpgsqlConnectionStringBuilder(strict).Database!;
        server.Sql(name, $"ALTER DATABASE {name} SET default_transaction_isolation = 'serializable'");
        await using var onStrict = new Kiln.Store.Metadata.Postgres.PostgresMetadataStore(strict);
        await onStrict.MigrateAsync(default);
        Assert.False(await onStrict.ImplicitlyReadCommittedAsync(default));
        var account = await onStrict.GetOrCreateAccountAsync("alice", default);
        var build = await onStrict.StartBuildAsync("step", "/nix/store/00000000000000000000000000000000-x.drv", account, 1, default); // in a transaction of its own
        Assert.True(await onStrict.ClaimStepAsync("step", "door-a", 100, 1, default));
        Assert.True(build > 0);

        await using var onDefault = new Kiln.Store.Metadata.Postgres.PostgresMetadataStore(server.CreateDatabase());
        await onDefault.MigrateAsync(default);
        Assert.True(await onDefault.ImplicitlyReadCommittedAsync(default));
    }

    // The collection lock across front doors: registrations share it, a collection has it alone, in PostgreSQL's order.
    [Fact]
    public async Task The_collection_lock_is_shared_by_registrations_and_held_alone_by_a_collection()
    {
        var database = server.CreateDatabase();
        await using var first = MetadataStores.Open(database);
        await using var second = MetadataStores.Open(database);
        await first.MigrateAsync(default);
        await second.MigrateAsync(default);

        var shared1 = (await first.LockAgainstCollectionAsync(exclusive: false, default))!;
        var shared2 = (await second.LockAgainstCollectionAsync(exclusive: false, default))!; // both at once
        var collection = first.LockAgainstCollectionAsync(exclusive: true, default);
        await Task.Delay(300);
        Assert.False(collection.IsCompleted);
        await shared1.DisposeAsync();
        await Task.Delay(300);
        Assert.False(collection.IsCompleted);
        await shared2.DisposeAsync();
        var held = (await collection.WaitAsync(TimeSpan.FromSeconds(30)))!;

        var registration = second.LockAgainstCollectionAsync(exclusive: false, default);
        await Task.Delay(300);
        Assert.False(registration.IsCompleted);
        await held.DisposeAsync();
        await using var _ = (await registration.WaitAsync(TimeSpan.FromSeconds(30)))!;

        // SQLite has one writing process: its in-process lock is the whole of it.
        await using var sqlite = MetadataStores.Open("sqlite://" + _temp["kiln.db"]);
        await sqlite.MigrateAsync(default);
        Assert.Null(await sqlite.LockAgainstCollectionAsync(exclusive: true, default));
    }

    // Whether another process waits for the lock: no while only shared holders hold it, yes once a collection asks
    // for it, no again when the collection has it.
    [Fact]
    public async Task A_held_lock_tells_whether_a_collection_elsewhere_waits_for_it()
    {
        var database = server.CreateDatabase();
        await using var first = MetadataStores.Open(database);
        await using var second = MetadataStores.Open(database);
        await first.MigrateAsync(default);
        await second.MigrateAsync(default);

        var shared = (await first.LockAgainstCollectionAsync(exclusive: false, default))!;
        await using (var other = (await second.LockAgainstCollectionAsync(exclusive: false, default))!)
        {
            Assert.False(await shared.IsAwaitedAsync(default));
        }

        var collection = second.LockAgainstCollectionAsync(exclusive: true, default);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!await shared.IsAwaitedAsync(default))
        {
            Assert.True(DateTime.UtcNow < deadline, "the waiting collection was never seen");
            await Task.Delay(50);
        }

        await shared.DisposeAsync();
        await using var held = (await collection.WaitAsync(TimeSpan.FromSeconds(30)))!;
        Assert.False(await held.IsAwaitedAsync(default));
    }

    // A busy front door's registrations overlap without a gap (a new one starts before the last ends), so it holds the
    // database's lock shared all along; a collection through another front door still gets it once the registrations in
    // flight end, has it alone, and the registrations carry on after it.
    [Fact]
    public async Task A_collection_gets_the_lock_from_a_front_door_whose_registrations_never_pause()
    {
        var database = server.CreateDatabase();
        await using var first = MetadataStores.Open(database);
        await using var second = MetadataStores.Open(database);
        await first.MigrateAsync(default);
        await second.MigrateAsync(default);
        using var busy = new Kiln.Store.Gc.GcLock(second.LockAgainstCollectionAsync, TimeSpan.FromMilliseconds(50));
        using var collecting = new Kiln.Store.Gc.GcLock(first.LockAgainstCollectionAsync);

        var collectingNow = 0;
        var overlapped = 0;
        var finished = 0;
        async Task RegisterAsync()
        {
            await using var held = await busy.SharedAsync(default);
            Interlocked.Add(ref overlapped, Volatile.Read(ref collectingNow));
            await Task.Delay(100);
            Interlocked.Add(ref overlapped, Volatile.Read(ref collectingNow));
            Interlocked.Increment(ref finished);
        }

        using var stop = new CancellationTokenSource();
        var registrations = Task.Run(async () =>
        {
            var started = new List<Task>();
            while (!stop.IsCancellationRequested)
            {
                started.Add(RegisterAsync());
                await Task.Delay(30);
            }

            await Task.WhenAll(started);
        });

        await Task.Delay(500);
        var collection = await collecting.ExclusiveAsync(default).WaitAsync(TimeSpan.FromSeconds(30)); // before: never
        Volatile.Write(ref collectingNow, 1);
        var before = Volatile.Read(ref finished);
        await Task.Delay(300);
        Assert.Equal(before, Volatile.Read(ref finished)); // none ran while the collection held it
        Volatile.Write(ref collectingNow, 0);
        await collection.DisposeAsync();

        await Task.Delay(500);
        await stop.CancelAsync();
        await registrations.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(0, overlapped);
        Assert.True(Volatile.Read(ref finished) > before + 3, $"{finished} registrations, {before} before the collection");
    }

    // What another front door changes reaches this one's narinfo cache through the version (LISTEN/NOTIFY).
    [Fact]
    public async Task A_record_changed_through_another_front_door_moves_this_ones_version()
    {
        var database = server.CreateDatabase();
        await using var first = MetadataStores.Open(database);
        await using var second = MetadataStores.Open(database);
        await first.MigrateAsync(default);
        await second.MigrateAsync(default);
        var account = await first.GetOrCreateAccountAsync("alice", default);
        var path = MetadataContract.P("p");
        await second.RegisterAsync(account, [MetadataContract.New(MetadataContract.Info(path))], default);
        var before = first.PathRecordsVersion;
        await Task.Delay(200);
        Assert.Equal(before, first.PathRecordsVersion); // a registration elsewhere changes no record

        await second.AddSignaturesAsync(account, path, ["k:1"], default);
        Assert.True(await Eventually(() => first.PathRecordsVersion != before), "the signature added through the second store never moved the first's version");

        var signed = first.PathRecordsVersion;
        await second.DeletePathsAsync(account, [path], default);
        Assert.True(await Eventually(() => first.PathRecordsVersion != signed), "the deletion through the second store never moved the first's version");
    }

    [Fact]
    public async Task While_nobody_listens_every_read_is_a_new_version_and_listening_resumes()
    {
        var database = server.CreateDatabase();
        await using var store = MetadataStores.Open(database);
        await store.MigrateAsync(default);
        var name = new Npgsql.NpgsqlConnectionStringBuilder(database).Database!;
        Assert.Equal(store.PathRecordsVersion, store.PathRecordsVersion);

        // The listening connection dies (a network cut, a database restart): a change could go unheard, so no version
        // may repeat until the store listens again.
        Assert.Equal("t", server.Sql(name, "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'").Trim());
        Assert.True(await Eventually(() => store.PathRecordsVersion != store.PathRecordsVersion), "the version stayed still while nothing listened");
        Assert.True(await Eventually(() => store.PathRecordsVersion == store.PathRecordsVersion, TimeSpan.FromSeconds(15)), "the store never listened again");
    }

    [Fact]
    public async Task A_database_that_does_not_answer_fails_as_storage_without_the_password()
    {
        var connection = new Npgsql.NpgsqlConnectionStringBuilder(server.CreateDatabase()) { Port = 1, Timeout = 2 };
        await using var store = MetadataStores.Open(connection.ConnectionString);
        var error = await Assert.ThrowsAsync<IOException>(() => store.FindAccountAsync("alice", default));
        Assert.Equal(5, error.HResult);
        Assert.StartsWith("the metadata database could not be read", error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(server.Password, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_read_only_store_never_writes()
    {
        var database = server.CreateDatabase();
        await using (var writer = MetadataStores.Open(database))
        {
            await writer.MigrateAsync(default);
            await writer.GetOrCreateAccountAsync("alice", default);
        }

        await using var reader = MetadataStores.Open(database, readOnly: true);
        Assert.NotNull(await reader.FindAccountAsync("alice", default));
        var error = await Assert.ThrowsAsync<IOException>(() => reader.TryCreateAccountAsync("bob", default));
        Assert.Equal(30, error.HResult);
    }

    [Fact]
    public async Task The_password_comes_from_a_file_or_the_environment_never_needs_the_command_line()
    {
        var database = new Npgsql.NpgsqlConnectionStringBuilder(server.CreateDatabase());
        var file = _temp["password"];
        File.WriteAllText(file, server.Password + "\n");
        var url = $"postgres://{PostgresServer.User}@127.0.0.1:{server.Port}/{database.Database}?password_file={Uri.EscapeDataString(file)}&application_name=kiln";
        await using (var store = MetadataStores.Open(url))
        {
            await store.MigrateAsync(default);
            Assert.NotNull(await store.TryCreateAccountAsync("alice", default));
        }

        var bare = $"postgres://{PostgresServer.User}@127.0.0.1:{server.Port}/{database.Database}";
        var resolved = Kiln.Store.Metadata.Postgres.PostgresConnection.Parse(bare, name => name == "KILN_DATABASE_PASSWORD" ? server.Password : null);
        await using (var store = MetadataStores.Open(resolved))
        {
            Assert.NotNull(await store.FindAccountAsync("alice", default));
        }

        var keywords = $"Host=127.0.0.1;Port={server.Port};Username={PostgresServer.User};Database={database.Database};Password File={file}";
        await using (var store = MetadataStores.Open(keywords))
        {
            Assert.NotNull(await store.FindAccountAsync("alice", default));
        }
    }

    [Fact]
    public void Connection_forms_are_read_and_refused_clearly()
    {
        var parse = (string text) => new Npgsql.NpgsqlConnectionStringBuilder(Kiln.Store.Metadata.Postgres.PostgresConnection.Parse(text, _ => null));
        var url = parse("postgres://kiln:s%40cret@db.example:6543/kiln?sslmode=require");
        Assert.Equal(("db.example", 6543, "kiln", "s@cret", "kiln", Npgsql.SslMode.Require), (url.Host, url.Port, url.Username, url.Password, url.Database, url.SslMode));
        var socket = parse("postgresql:///kiln?host=/run/postgresql");
        Assert.Equal(("/run/postgresql", "kiln"), (socket.Host, socket.Database));

        Assert.Contains("'nope'", Assert.Throws<ArgumentException>(() => parse("postgres://db/kiln?nope=1")).Message, StringComparison.Ordinal);
        Assert.Contains("no host", Assert.Throws<ArgumentException>(() => parse("postgres:///kiln")).Message, StringComparison.Ordinal);
        Assert.Contains("cannot be read", Assert.Throws<ArgumentException>(() => parse($"postgres://db/kiln?password_file={_temp["absent"]}")).Message, StringComparison.Ordinal);
        Assert.Contains("give one", Assert.Throws<ArgumentException>(() => parse($"Host=db;Password=x;Password File={_temp["absent"]}")).Message, StringComparison.Ordinal);

        Assert.Equal("postgres://kiln:***@db/kiln", Kiln.Store.Metadata.Postgres.PostgresConnection.Redact("postgres://kiln:secret@db/kiln"));
        Assert.DoesNotContain("secret", Kiln.Store.Metadata.Postgres.PostgresConnection.Redact("Host=db;Password=secret"), StringComparison.Ordinal);
        Assert.DoesNotContain("secret", Kiln.Store.Metadata.Postgres.PostgresConnection.Redact("Host=db;SSL Password=secret"), StringComparison.Ordinal);
        Assert.Equal("postgres://kiln:***@db/kiln", Kiln.Store.Metadata.Postgres.PostgresConnection.Redact("postgres://kiln:se@cret@db/kiln"));
        Assert.DoesNotContain("secret", Assert.Throws<ArgumentException>(() => MetadataStores.Open("mysql://kiln:secret@db/kiln")).Message, StringComparison.Ordinal);
    }

    private static async Task<bool> Eventually(Func<bool> condition, TimeSpan? within = null)
    {
        var deadline = DateTime.UtcNow + (within ?? TimeSpan.FromSeconds(5));
        while (DateTime.UtcNow < deadline)
        {
            if (condition())
            {
                return true;
            }

            await Task.Delay(50);
        }

        return condition();
    }

    public void Dispose() => _temp.Dispose();
}

/// <summary>A data directory bound to a database: what every command given <c>--data</c> then opens.</summary>
public sealed class MetadataBindingTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public void A_data_directory_is_bound_to_postgresql_privately_and_never_away_from_its_sqlite()
    {
        var data = _temp["data"];
        Directory.CreateDirectory(data);
        Assert.Equal("sqlite://" + Path.Combine(data, "kiln.db"), MetadataStores.ForDataDirectory(data));

        var password = _temp["password"];
        File.WriteAllText(password, "pw-from-file\n");
        MetadataStores.Bind(data, $"postgres://kiln@db.example/kiln?password_file={password}");
        var bound = MetadataStores.ForDataDirectory(data);
        var connection = new Npgsql.NpgsqlConnectionStringBuilder(bound);
        Assert.Equal(("db.example", "kiln", "pw-from-file"), (connection.Host, connection.Database, connection.Password));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(data, MetadataStores.BindingFile)));

        // Bound again (the database moved), the new one wins.
        MetadataStores.Bind(data, "Host=db2.example;Database=kiln;Password=x");
        Assert.Equal("db2.example", new Npgsql.NpgsqlConnectionStringBuilder(MetadataStores.ForDataDirectory(data)).Host);

        Assert.Contains("not a PostgreSQL database", Assert.Throws<ArgumentException>(() => MetadataStores.Bind(data, "sqlite:///x.db")).Message, StringComparison.Ordinal);

        // A directory whose SQLite holds its accounts and paths is not silently switched away from them.
        var embedded = _temp["embedded"];
        Directory.CreateDirectory(embedded);
        File.WriteAllText(Path.Combine(embedded, "kiln.db"), "");
        Assert.Contains("keeps its metadata in kiln.db", Assert.Throws<ArgumentException>(() => MetadataStores.Bind(embedded, "postgres://db/kiln")).Message, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(embedded, MetadataStores.BindingFile)));
    }

    public void Dispose() => _temp.Dispose();
}
