using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Accounts;
using Kiln.Store.Blobs;
using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

/// <summary>
/// <c>kiln store migrate</c> on a real PostgreSQL and a real S3 server (s3rver): an embedded installation (SQLite and
/// a blob directory) with accounts, credentials, paths, builds and the service's secrets moves whole, byte for byte,
/// and can be interrupted and resumed; a destination holding another installation, or a corrupt blob here, is refused
/// with the data directory left as it was.
/// </summary>
public sealed class StoreMigrationTests(PostgresServer postgres, S3Server s3) : IDisposable
{
    private readonly TempDir _temp = new();

    private static StorePath P(string name) => MetadataContract.P(name);

    private static readonly byte[] KeptFile = "a compressed NAR, as an HTTP client uploaded it"u8.ToArray();

    /// <summary>An installation with something in every table; returns its blobs' bytes by hash.</summary>
    private static async Task<Dictionary<NixHash, byte[]>> FillAsync(string directory)
    {
        var store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = directory }, default);
        await using var _ = store;
        var metadata = store.Metadata;
        var blobs = new Dictionary<NixHash, byte[]>();
        async Task<NixHash> Blob(int size, int seed)
        {
            var data = new byte[size];
            new Random(seed).NextBytes(data);
            await using var writer = store.Blobs.CreateWriter();
            writer.Write(data);
            var hash = await writer.CompleteAsync(default);
            await writer.CommitAsync(default);
            blobs[hash] = data;
            return hash;
        }

        var alice = await metadata.GetOrCreateAccountAsync("alice", default);
        var bob = await metadata.GetOrCreateAccountAsync("bob", default);
        var library = P("library");
        var program = P("program");
        var drv = P("program.drv");
        var small = await Blob(10_000, 1);
        var large = await Blob(20 << 20, 2); // more than one part of a multipart upload
        var empty = await Blob(0, 3);
        ValidPathInfo Info(StorePath path, NixHash hash, long size, params StorePath[] references) => new()
        {
            Path = path,
            NarHash = hash,
            NarSize = size,
            References = new SortedSet<StorePath>(references),
            Deriver = path == drv ? null : drv,
            Signatures = new SortedSet<string>(StringComparer.Ordinal) { "cache.example.org-1:" + path.Name },
            RegistrationTime = 1_700_000_000,
        };

        await metadata.RegisterAsync(alice, [
            new NewPath(Info(library, small, 10_000, library), Provenance.Uploaded, PathTrust.Untrusted, null),
            new NewPath(Info(program, large, 20 << 20, library), Provenance.Built, PathTrust.Built, null),
            new NewPath(Info(drv, empty, 0) with { ContentAddress = new ContentAddress(ContentAddressMethod.Text, NixHash.Compute(NixHashAlgorithm.Sha256, "drv")) }, Provenance.Uploaded, PathTrust.ContentAddressed,
                new Dictionary<string, StorePath?> { ["out"] = program, ["dev"] = null }),
        ], default);
        await metadata.RegisterAsync(bob, [new NewPath(Info(library, small, 10_000, library), Provenance.Shared, PathTrust.SignedByTrustedKey, null)], default);
        await metadata.AddRootAsync(alice, RootKind.Permanent, "result", program, default);
        await metadata.SetPublicCacheAsync(bob, true, default);
        await metadata.SetUpstreamSettingsAsync(alice, "https://cache.example.org", "cache.example.org-1:AAAA", "machine cache.example.org password secret", default);

        var key = new List<byte> { 0, 0, 0, 11 };
        key.AddRange("ssh-ed25519"u8.ToArray());
        key.AddRange(new byte[] { 0, 0, 0, 32 });
        key.AddRange(Enumerable.Repeat((byte)7, 32));
        await metadata.AddSshKeyAsync(alice, SshPublicKey.FromParts("ssh-ed25519", Convert.ToBase64String(key.ToArray()), "alice@laptop"), KeyPermissions.StoreRead, default);
        var token = await metadata.AddTokenAsync(alice, "ab".PadRight(64, 'c'), "ci", KeyPermissions.StoreRead | KeyPermissions.StoreWrite, 2_000_000_000, default);
        await metadata.AddTokenAsync(bob, "de".PadRight(64, 'f'), "", KeyPermissions.StoreRead, null, default);
        await metadata.RevokeTokenAsync(alice, token.Id, default);
        await metadata.SetSigningKeyAsync(alice, "alice-1:" + Convert.ToBase64String(new byte[64]), default);

        var built = await metadata.StartBuildAsync("step-1", drv.BaseName, alice, 1000, default);
        await metadata.FinishBuildAsync(built, new BuildEnd(true, "", "", 1010, 1_500_000, 250_000, 1 << 20,
            [new BuildOutputRecord("out", program, large, 20 << 20, [library], null)]), default);
        await metadata.AddBuildAccountAsync(built, bob, default);
        await metadata.StartBuildAsync("step-2", drv.BaseName, bob, 1020, default); // left running: the next start abandons it
        await metadata.ClaimStepAsync("step-2", "door-a", 2000, 1020, default);
        using (var view = await store.OpenViewAsync("alice", default))
        {
            Assert.True(await view.KeepNarFileAsync(NixHash.Compute(NixHashAlgorithm.Sha256, KeptFile).ToNix32() + ".nar.xz", small, "xz", new MemoryStream(KeptFile), default));
        }

        using (var log = store.Logs.Create(built))
        {
            log.AppendLine("the log of the first build");
        }

        await metadata.GetOrAddServerSecretAsync("build-key", "kiln-1:" + Convert.ToBase64String(new byte[64]), default);
        await metadata.AddAgentTokenAsync("farm", "12".PadRight(64, '3'), default);
        await metadata.AddAgentTokenAsync("old", "45".PadRight(64, '6'), default);
        await metadata.AddBuilderAsync(new BuilderRecord { Name = "mac", Uri = "ssh-ng://nix@mac.example", Systems = ["aarch64-darwin"], MaxJobs = 2, SshKey = "key", Created = 1 }, default);
        await metadata.RevokeAgentTokenAsync("old", default);
        return blobs;
    }

    private static async Task<Dictionary<string, TableDigest>> DigestsAsync(IMetadataStore store) =>
        (await Task.WhenAll(MetadataTables.All.Select(async t => (t.Name, await TableDigest.OfAsync(t, store.ReadTableAsync(t, default), default)))))
            .ToDictionary(x => x.Name, x => x.Item2);

    [Fact]
    public async Task An_embedded_installation_moves_to_postgres_and_s3_whole()
    {
        var directory = _temp["data"];
        var blobs = await FillAsync(directory);
        var database = postgres.CreateDatabase();
        var bucket = s3.NewLocation();
        Dictionary<string, TableDigest> before;
        await using (var sqlite = MetadataStores.Open(MetadataStores.DefaultUrl(directory)))
        {
            before = await DigestsAsync(sqlite);
        }

        var messages = new List<string>();
        var report = await StoreMigration.MigrateDataDirectoryAsync(directory, database, bucket, messages.Add, default);
        Assert.Equal(3, report.BlobsCopied);
        Assert.Equal(blobs.Values.Sum(b => (long)b.Length), report.BytesCopied);
        Assert.Equal(MetadataTables.All.Select(t => t.Name), report.Tables.Select(t => t.Table));
        Assert.All(report.Tables, t => Assert.Equal(t.Rows, t.Added));
        Assert.Contains("metadata: every table compared equal", messages);

        // The data directory is bound to its new backends: a store opened on it reads PostgreSQL and the bucket.
        Assert.Equal(database, DataDirectoryBindings.Read(directory, MetadataStores.BindingFile));
        Assert.Equal(bucket, DataDirectoryBindings.Read(directory, BlobStores.BindingFile));
        var store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = directory }, default);
        await using (store)
        {
            Assert.IsType<Kiln.Store.Metadata.Postgres.PostgresMetadataStore>(store.Metadata);
            Assert.IsType<S3BlobStore>(store.Blobs);
            Assert.Equal(before, await DigestsAsync(store.Metadata));
            foreach (var (hash, data) in blobs)
            {
                await using var source = (await store.Blobs.OpenReadAsync(hash, default))!;
                using var copy = new MemoryStream();
                await (await source.OpenStreamAsync(default)).CopyToAsync(copy);
                Assert.True(data.AsSpan().SequenceEqual(copy.ToArray()));
            }

            // What the ports answer, through PostgreSQL: the token, the key, the build, the signing key, the settings.
            var alice = (await store.Accounts.FindAccountAsync("alice", default))!;
            Assert.NotNull(await store.Accounts.FindTokenAsync("de".PadRight(64, 'f'), default));
            Assert.Equal("alice@laptop", Assert.Single(await store.Accounts.ListSshKeysAsync(alice.Id, default)).Key.Comment);
            Assert.StartsWith("alice-1:", await store.Settings.GetSigningKeyAsync(alice.Id, default));
            Assert.Equal("machine cache.example.org password secret", (await store.Settings.GetUpstreamSettingsAsync(alice.Id, default)).Netrc);
            var build = Assert.Single(await store.Builds.ListBuildsAsync(alice.Id, 10, default), b => b.Succeeded);
            Assert.Equal(P("program"), Assert.Single(build.Outputs).Path);
            var report2 = await StoreMaintenance.VerifyAllAsync(store, _ => { }, default);
            Assert.Empty(report2.Problems);
            Assert.Equal(3, report2.Blobs);

            // Ids generated from now on follow the copied ones: a new account and a new path go in beside them.
            var carol = await store.Accounts.GetOrCreateAccountAsync("carol", default);
            Assert.True(carol > alice.Id);
            await store.Metadata.RegisterAsync(carol, [MetadataContract.New(MetadataContract.Info(P("new")))], default);
            Assert.Single(await store.Metadata.GetAllPathsAsync(carol, default));
        }

        // Another front door on the same database and bucket (a data directory of its own) serves the kept compressed NAR
        // and the build log that were files of the embedded installation.
        await using (var other = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["other"], MetadataUrl = database, BlobStoreUrl = bucket }, default))
        {
            using var view = await other.OpenViewAsync("alice", default);
            await using (var kept = (await view.OpenKeptNarFileAsync(NixHash.Compute(NixHashAlgorithm.Sha256, KeptFile).ToNix32() + ".nar.xz", default))!)
            {
                using var copy = new MemoryStream();
                await (await kept.OpenStreamAsync(default)).CopyToAsync(copy);
                Assert.Equal(KeptFile, copy.ToArray());
            }

            var first = (await other.Builds.ListBuildsAsync(null, 10, default)).Single(b => b.StepKey == "step-1");
            await using var log = (await other.Logs.OpenReadAsync(first.Id, 0, default))!;
            Assert.Equal("the log of the first build\n", await new StreamReader(log).ReadToEndAsync());
        }

        // And back: the same tables copy from PostgreSQL into a new SQLite database and compare equal there too.
        await using var fromPostgres = MetadataStores.Open(database);
        await using var back = MetadataStores.Open(MetadataStores.DefaultUrl(_temp["back"]));
        Directory.CreateDirectory(_temp["back"]);
        await StoreMigration.CopyMetadataAsync(fromPostgres, back, _ => { }, default);
        Assert.Equal(await DigestsAsync(fromPostgres), await DigestsAsync(back));
    }

    [Fact]
    public async Task An_interrupted_migration_leaves_the_installation_as_it_was_and_resumes()
    {
        var directory = _temp["data"];
        await FillAsync(directory);
        var database = postgres.CreateDatabase();
        var bucket = s3.NewLocation();

        // Interrupted once the paths are copied (the blobs are, already): the data directory is still bound to nothing
        // new, and opens on its own SQLite and blobs.
        using var interrupt = new CancellationTokenSource();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => StoreMigration.MigrateDataDirectoryAsync(directory, database, bucket,
            message =>
            {
                if (message.StartsWith("paths:", StringComparison.Ordinal))
                {
                    interrupt.Cancel();
                }
            }, interrupt.Token));
        Assert.Null(DataDirectoryBindings.Read(directory, MetadataStores.BindingFile));
        Assert.Null(DataDirectoryBindings.Read(directory, BlobStores.BindingFile));
        await using (var store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = directory }, default))
        {
            Assert.IsType<DiskBlobStore>(store.Blobs);
            Assert.Equal(3, (await store.Metadata.GetAllPathsAsync((await store.Accounts.FindAccountAsync("alice", default))!.Id, default)).Count);
        }

        // Run again, it copies what is missing and nothing twice.
        var report = await StoreMigration.MigrateDataDirectoryAsync(directory, database, bucket, _ => { }, default);
        Assert.Equal((0, 3L), (report.BlobsCopied, report.BlobsPresent));
        var paths = report.Tables.Single(t => t.Table == "paths");
        Assert.Equal((4L, 0L), (paths.Rows, paths.Added));
        Assert.True(report.Tables.Single(t => t.Table == "builds").Added > 0);
        Assert.Equal(database, DataDirectoryBindings.Read(directory, MetadataStores.BindingFile));
    }

    [Fact]
    public async Task A_database_holding_another_installation_is_refused()
    {
        var directory = _temp["data"];
        await FillAsync(directory);
        var database = postgres.CreateDatabase();
        await using (var other = MetadataStores.Open(database))
        {
            await other.MigrateAsync(default);
            await other.GetOrCreateAccountAsync("mallory", default);
        }

        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => StoreMigration.MigrateDataDirectoryAsync(directory, database, null, _ => { }, default));
        Assert.Contains("migrate into an empty database", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("mallory", refused.Message, StringComparison.Ordinal);
        Assert.Null(DataDirectoryBindings.Read(directory, MetadataStores.BindingFile));

        // Nor is it a migration to move to where the directory is already, or to no destination at all.
        await Assert.ThrowsAsync<ArgumentException>(() => StoreMigration.MigrateDataDirectoryAsync(directory, null, null, _ => { }, default));
        await Assert.ThrowsAsync<ArgumentException>(() => StoreMigration.MigrateDataDirectoryAsync(directory, "sqlite:///tmp/x.db", null, _ => { }, default));
    }

    [Fact]
    public async Task A_corrupt_blob_is_not_copied_and_the_directory_stays_bound_as_it_was()
    {
        var directory = _temp["data"];
        var blobs = await FillAsync(directory);
        var victim = blobs.Keys.First(h => blobs[h].Length == 10_000).ToNix32();
        var file = Path.Combine(directory, "blobs", victim[..2], victim + ".nar");
        File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        await File.WriteAllBytesAsync(file, new byte[10_000]);

        var bucket = s3.NewLocation();
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() => StoreMigration.MigrateDataDirectoryAsync(directory, null, bucket, _ => { }, default));
        Assert.Contains(victim, refused.Message, StringComparison.Ordinal);
        Assert.Null(DataDirectoryBindings.Read(directory, BlobStores.BindingFile));
        Assert.DoesNotContain(s3.ObjectFiles(bucket), f => f.Contains(victim, StringComparison.Ordinal));
    }

    // What the copy covers is checked against what each provider's migrations actually create: a column added to a
    // table without being added to MetadataTables would be lost in a migration, so it fails here.
    [Fact]
    public async Task Every_table_and_column_of_both_providers_is_copied()
    {
        var expected = MetadataTables.All.SelectMany(t => t.Columns.Select(c => $"{t.Name}.{c.Name}")).Order(StringComparer.Ordinal).ToList();
        var database = postgres.CreateDatabase();
        await using (var store = MetadataStores.Open(database))
        {
            await store.MigrateAsync(default);
        }

        var name = new Npgsql.NpgsqlConnectionStringBuilder(database).Database!;
        var postgresColumns = postgres.Sql(name, "SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema = 'public'")
            .Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Where(c => !MetadataTables.NotCopied.Contains(c.Split('.')[0])).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(expected, postgresColumns);

        var file = _temp["kiln.db"];
        await using (var store = MetadataStores.Open("sqlite://" + file))
        {
            await store.MigrateAsync(default);
        }

        var sqliteColumns = new List<string>();
        using (var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={file};Pooling=false"))
        {
            connection.Open();
            using var command = connection.CreateCommand();
            command.CommandText = "SELECT m.name || '.' || c.name FROM sqlite_master m, pragma_table_info(m.name) c WHERE m.type = 'table'";
            using var reader = command.ExecuteReader();
            while (reader.Read())
            {
                sqliteColumns.Add(reader.GetString(0));
            }
        }

        Assert.Equal(expected, sqliteColumns.Where(c => !MetadataTables.NotCopied.Contains(c.Split('.')[0])).Order(StringComparer.Ordinal).ToList());
    }

    public void Dispose() => _temp.Dispose();
}
