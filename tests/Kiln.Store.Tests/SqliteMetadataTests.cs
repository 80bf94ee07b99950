using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

/// <summary>A fresh SQLite metadata store per test, opened the way Kiln opens one (by URL).</summary>
internal sealed class SqliteStores : IDisposable
{
    private readonly Kiln.Nix.Tests.Support.TempDir _temp = new();

    public async Task<IMetadataStore> CreateAsync()
    {
        var store = MetadataStores.Open("sqlite://" + _temp[$"{Guid.NewGuid():N}.db"]);
        await store.MigrateAsync(default);
        return store;
    }

    public void Dispose() => _temp.Dispose();
}

public sealed class SqliteAccountMetadataTests : AccountMetadataContract, IDisposable
{
    private readonly SqliteStores _stores = new();

    protected override Task<IMetadataStore> CreateAsync() => _stores.CreateAsync();

    public void Dispose() => _stores.Dispose();
}

public sealed class SqliteAgentMetadataTests : AgentMetadataContract, IDisposable
{
    private readonly SqliteStores _stores = new();

    protected override Task<IMetadataStore> CreateAsync() => _stores.CreateAsync();

    public void Dispose() => _stores.Dispose();
}

public sealed class SqliteSettingsMetadataTests : SettingsMetadataContract, IDisposable
{
    private readonly SqliteStores _stores = new();

    protected override Task<IMetadataStore> CreateAsync() => _stores.CreateAsync();

    public void Dispose() => _stores.Dispose();
}

public sealed class SqlitePathMetadataTests : PathMetadataContract, IDisposable
{
    private readonly SqliteStores _stores = new();

    protected override Task<IMetadataStore> CreateAsync() => _stores.CreateAsync();

    public void Dispose() => _stores.Dispose();
}

public sealed class SqliteBuildMetadataTests : BuildMetadataContract, IDisposable
{
    private readonly SqliteStores _stores = new();

    protected override Task<IMetadataStore> CreateAsync() => _stores.CreateAsync();

    public void Dispose() => _stores.Dispose();
}

/// <summary>What is SQLite's own: migrations, WAL, and metadata URLs.</summary>
public sealed class SqliteMetadataStoreTests : IDisposable
{
    private readonly Kiln.Nix.Tests.Support.TempDir _temp = new();

    [Fact]
    public void Metadata_urls_choose_the_provider_and_refuse_what_Kiln_does_not_have()
    {
        Assert.IsType<Kiln.Store.Metadata.Sqlite.SqliteMetadataStore>(MetadataStores.Open("sqlite://" + _temp["x.db"]));
        Assert.Equal("sqlite:///var/lib/kiln/kiln.db", MetadataStores.DefaultUrl("/var/lib/kiln"));
        Assert.Contains("absolute path", Assert.Throws<ArgumentException>(() => MetadataStores.Open("sqlite://relative.db")).Message, StringComparison.Ordinal);
        Assert.IsType<Kiln.Store.Metadata.Postgres.PostgresMetadataStore>(MetadataStores.Open("postgres://db/kiln"));
        Assert.IsType<Kiln.Store.Metadata.Postgres.PostgresMetadataStore>(MetadataStores.Open("Host=db;Database=kiln"));
        Assert.Throws<ArgumentException>(() => MetadataStores.Open("mysql://db/kiln"));
    }

    [Fact]
    public async Task A_database_Kiln_cannot_open_or_write_fails_as_storage_with_the_errno_not_as_a_bug()
    {
        var directory = _temp["db"];
        Directory.CreateDirectory(directory);
        var file = Path.Combine(directory, "kiln.db");
        var store = new Kiln.Store.Metadata.Sqlite.SqliteMetadataStore(file);
        await store.MigrateAsync(default);
        Assert.NotNull(await store.TryCreateAccountAsync("alice", default));
        await store.DisposeAsync();
        Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();

        // Read-only (a remount after an I/O error, say): reported as storage, read-only or failing.
        if (Environment.UserName == "root" && Kiln.Nix.Tests.Support.Processes.Run("mount", ["--bind", directory, directory]).ExitCode == 0)
        {
            try
            {
                Assert.Equal(0, Kiln.Nix.Tests.Support.Processes.Run("mount", ["-o", "remount,bind,ro", directory]).ExitCode);
                var readOnly = new Kiln.Store.Metadata.Sqlite.SqliteMetadataStore(file);
                var refused = await Assert.ThrowsAnyAsync<IOException>(() => readOnly.TryCreateAccountAsync("bob", default));
                Assert.True(refused.GetType() == typeof(IOException) && refused.HResult is 30 or 5, $"{refused.HResult}: {refused.Message}");
                await readOnly.DisposeAsync();
                Microsoft.Data.Sqlite.SqliteConnection.ClearAllPools();
            }
            finally
            {
                // Lazily: SQLite may still hold the files it opened there for a moment.
                Kiln.Nix.Tests.Support.Processes.Run("umount", ["-l", directory]);
            }
        }

        // The database's directory gone (a lost mount): it cannot be opened, for reading or writing.
        Directory.Move(directory, directory + "-moved");
        var gone = new Kiln.Store.Metadata.Sqlite.SqliteMetadataStore(file);
        foreach (var attempt in new Func<Task>[] { () => gone.FindAccountAsync("alice", default), () => gone.TryCreateAccountAsync("bob", default) })
        {
            var failed = await Assert.ThrowsAnyAsync<IOException>(attempt);
            Assert.True(failed.GetType() == typeof(IOException) && failed.HResult == 5, $"{failed.HResult}: {failed.Message}");
        }

        await gone.DisposeAsync();
    }

    [Fact]
    public async Task Migrations_apply_once_and_the_database_is_in_wal_mode()
    {
        var path = _temp["twice.db"];
        await using (var store = new Kiln.Store.Metadata.Sqlite.SqliteMetadataStore(path))
        {
            await store.MigrateAsync(default);
            await store.GetOrCreateAccountAsync("alice", default);
            await store.MigrateAsync(default);
        }

        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path)); // signing keys and credentials are in it
        using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path}");
        connection.Open();
        using var count = connection.CreateCommand();
        count.CommandText = "SELECT count(*), (SELECT count(*) FROM accounts) FROM schema_migrations";
        using var reader = count.ExecuteReader();
        reader.Read();
        Assert.Equal(18, reader.GetInt64(0)); // 0001_initial … 0018_queue_board: each applied once
        Assert.Equal(1, reader.GetInt64(1));
        using var mode = connection.CreateCommand();
        mode.CommandText = "PRAGMA journal_mode";
        Assert.Equal("wal", (string)mode.ExecuteScalar()!);
    }

    [Fact]
    public async Task Two_processes_migrating_a_new_database_at_once_both_succeed()
    {
        // kiln serve starting while an operator runs kiln account create: both open and migrate the same file.
        for (var round = 0; round < 5; round++)
        {
            var path = Path.Combine(Path.GetTempPath(), $"kiln-race-{Guid.NewGuid():N}.db");
            try
            {
                var stores = Enumerable.Range(0, 3).Select(_ => new Kiln.Store.Metadata.Sqlite.SqliteMetadataStore(path)).ToList();
                await Task.WhenAll(stores.Select(s => Task.Run(() => s.MigrateAsync(default))));
                foreach (var store in stores)
                {
                    await store.DisposeAsync();
                }
            }
            finally
            {
                foreach (var file in new[] { path, path + "-wal", path + "-shm" })
                {
                    File.Delete(file);
                }
            }
        }
    }

    public void Dispose() => _temp.Dispose();
}

public sealed class SqlitePushMetadataTests : PushMetadataContract, IDisposable
{
    private readonly SqliteStores _stores = new();

    protected override Task<IMetadataStore> CreateAsync() => _stores.CreateAsync();

    public void Dispose() => _stores.Dispose();
}
