using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

/// <summary>
/// The contract every metadata provider keeps. Each provider's test class derives from this and says how to make
/// an empty store: SQLite now, PostgreSQL when Kiln scales out.
/// </summary>
public abstract class MetadataStoreContract
{
    protected abstract Task<IMetadataStore> CreateAsync();

    internal static StorePath P(string name, int seed = 0)
    {
        var hash = new byte[20];
        new Random(name.GetHashCode(StringComparison.Ordinal) ^ seed).NextBytes(hash);
        return StorePath.FromHash(hash, name);
    }

    internal static ValidPathInfo Info(StorePath path, params StorePath[] references) => new()
    {
        Path = path,
        NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, path.BaseName),
        NarSize = 100 + path.Name.Length,
        References = new SortedSet<StorePath>(references),
        RegistrationTime = 1700000000,
    };

    internal static NewPath New(ValidPathInfo info, IReadOnlyDictionary<string, StorePath?>? outputs = null) =>
        new(info, Provenance.Uploaded, PathTrust.Untrusted, outputs);

    [Fact]
    public async Task Accounts_are_created_once()
    {
        await using var store = await CreateAsync();
        var a = await store.GetOrCreateAccountAsync("alice", default);
        Assert.Equal(a, await store.GetOrCreateAccountAsync("alice", default));
        var b = await store.GetOrCreateAccountAsync("bob", default);
        Assert.NotEqual(a, b);
        Assert.Equal(["alice", "bob"], (await store.ListAccountsAsync(default)).Select(x => x.Name));
    }

    // An Ed25519 public key blob as OpenSSH encodes it: the type and the 32 key bytes, each as an SSH string.
    private static Kiln.Store.Accounts.SshPublicKey Key(byte seed, string comment = "")
    {
        var blob = new List<byte> { 0, 0, 0, 11 };
        blob.AddRange("ssh-ed25519"u8.ToArray());
        blob.AddRange(new byte[] { 0, 0, 0, 32 });
        blob.AddRange(Enumerable.Repeat(seed, 32));
        return Kiln.Store.Accounts.SshPublicKey.FromParts("ssh-ed25519", Convert.ToBase64String(blob.ToArray()), comment);
    }

    [Fact]
    public async Task Keys_belong_to_one_account_and_are_found_by_blob_and_id()
    {
        await using var store = await CreateAsync();
        var alice = (await store.TryCreateAccountAsync("alice", default))!;
        Assert.Null(await store.TryCreateAccountAsync("alice", default));
        var bob = (await store.TryCreateAccountAsync("bob", default))!;
        Assert.Equal(alice, await store.FindAccountAsync("alice", default));
        Assert.Null(await store.FindAccountAsync("carol", default));

        var read = Kiln.Store.Accounts.KeyPermissions.StoreRead;
        var added = await store.AddSshKeyAsync(alice.Id, Key(1, "laptop"), read | Kiln.Store.Accounts.KeyPermissions.BuildWrite, default);
        Assert.Equal("alice", added.AccountName);
        await Assert.ThrowsAsync<DuplicateKeyException>(() => store.AddSshKeyAsync(bob.Id, Key(1), read, default));
        await store.AddSshKeyAsync(alice.Id, Key(2), read, default);

        var found = (await store.FindSshKeyAsync("ssh-ed25519", Key(1).Blob, default))!;
        Assert.Equal((added.Id, "alice", "laptop", read | Kiln.Store.Accounts.KeyPermissions.BuildWrite, true), (found.Id, found.AccountName, found.Key.Comment, found.Permissions, found.Enabled));
        Assert.Equal(found, await store.GetSshKeyAsync(added.Id, default));
        Assert.Null(await store.FindSshKeyAsync("ssh-rsa", Key(1).Blob, default));
        Assert.Equal(2, (await store.ListSshKeysAsync(alice.Id, default)).Count);
        Assert.Empty(await store.ListSshKeysAsync(bob.Id, default));

        Assert.False(await store.RemoveSshKeyAsync(bob.Id, added.Fingerprint, default));
        Assert.True(await store.RemoveSshKeyAsync(alice.Id, added.Fingerprint, default));
        Assert.Null(await store.GetSshKeyAsync(added.Id, default));
    }

    [Fact]
    public async Task Tokens_public_caches_signing_keys_and_upstream_settings_belong_to_accounts()
    {
        await using var store = await CreateAsync();
        var alice = (await store.TryCreateAccountAsync("alice", default))!;
        var bob = (await store.TryCreateAccountAsync("bob", default))!;
        var rw = Kiln.Store.Accounts.KeyPermissions.StoreRead | Kiln.Store.Accounts.KeyPermissions.StoreWrite;
        var token = await store.AddTokenAsync(alice.Id, "hash-1", "ci", rw, 2_000_000_000, default);
        Assert.Equal(("alice", "ci", rw, (long?)2_000_000_000, (long?)null), (token.AccountName, token.Description, token.Permissions, token.Expires, token.Revoked));
        Assert.Equal(token, await store.FindTokenAsync("hash-1", default));
        Assert.Null(await store.FindTokenAsync("hash-2", default));
        Assert.True(token.IsValidAt(1_900_000_000));
        Assert.False(token.IsValidAt(2_000_000_000));
        Assert.False(await store.RevokeTokenAsync(bob.Id, token.Id, default));
        Assert.True(await store.RevokeTokenAsync(alice.Id, token.Id, default));
        Assert.False(await store.RevokeTokenAsync(alice.Id, token.Id, default));
        Assert.False((await store.FindTokenAsync("hash-1", default))!.IsValidAt(1_900_000_000));
        Assert.Single(await store.ListTokensAsync(alice.Id, default));
        Assert.Empty(await store.ListTokensAsync(bob.Id, default));

        Assert.Empty(await store.GetPublicCacheAccountsAsync(default));
        Assert.True(await store.SetPublicCacheAsync(bob.Id, true, default));
        Assert.Equal([bob.Id], await store.GetPublicCacheAccountsAsync(default));

        Assert.Null(await store.GetSigningKeyAsync(alice.Id, default));
        await store.SetSigningKeyAsync(alice.Id, "k-1:secret", default);
        await store.SetSigningKeyAsync(alice.Id, "k-2:secret", default);
        Assert.Equal("k-2:secret", await store.GetSigningKeyAsync(alice.Id, default));

        Assert.Equal(new UpstreamSettings("", "", ""), await store.GetUpstreamSettingsAsync(alice.Id, default));
        await store.SetUpstreamSettingsAsync(alice.Id, "https://a https://b", "k:AAAA", null, default);
        await store.SetUpstreamSettingsAsync(alice.Id, null, null, "machine a login u password p", default);
        Assert.Equal(new UpstreamSettings("https://a https://b", "k:AAAA", "machine a login u password p"), await store.GetUpstreamSettingsAsync(alice.Id, default));
        Assert.Equal(new UpstreamSettings("", "", ""), await store.GetUpstreamSettingsAsync(bob.Id, default));
    }

    [Fact]
    public async Task Lookups_over_several_views_find_paths_and_nars_only_there()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var carol = await store.GetOrCreateAccountAsync("carol", default);
        var path = P("shared-name");
        await store.RegisterAsync(bob, [New(Info(path))], default);
        Assert.Null(await store.FindPathByHashPartAsync([alice, carol], path.HashPart, default));
        Assert.Null(await store.FindPathByHashPartAsync([], path.HashPart, default));
        var found = (await store.FindPathByHashPartAsync([alice, bob], path.HashPart, default))!.Value;
        Assert.Equal((bob, path), (found.Account, found.Record.Info.Path));

        var narHash = Info(path).NarHash;
        Assert.Null(await store.FindNarAsync([alice, carol], narHash, default));
        Assert.Equal(Info(path).NarSize, await store.FindNarAsync([carol, bob], narHash, default));

        await store.AddNarFileAsync("x.nar.xz", narHash, "xz", 42, default);
        Assert.Equal((narHash, "xz"), await store.FindNarFileAsync("x.nar.xz", default));
        Assert.Null(await store.FindNarFileAsync("y.nar.xz", default));
        Assert.Equal(["x.nar.xz"], await store.RemoveNarFilesAsync([narHash], default));
        Assert.Null(await store.FindNarFileAsync("x.nar.xz", default));
    }

    [Fact]
    public async Task Registered_paths_come_back_with_everything()
    {
        await using var store = await CreateAsync();
        var account = await store.GetOrCreateAccountAsync("alice", default);
        var dependency = P("dep");
        var path = P("app");
        var drv = P("app.drv");
        var info = Info(path, dependency, path) with
        {
            Deriver = drv,
            Signatures = new SortedSet<string>(StringComparer.Ordinal) { "k1:AAAA", "k2:BBBB" },
            ContentAddress = ContentAddress.Parse("fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"),
            Ultimate = true,
        };
        await store.RegisterAsync(account, [New(Info(dependency)), new NewPath(info, Provenance.Built, PathTrust.Built, null)], default);

        var records = await store.GetPathsAsync(account, [path, dependency, P("missing")], default);
        Assert.Equal(2, records.Count);
        var record = records[path];
        Assert.Equal(info.NarHash, record.Info.NarHash);
        Assert.Equal(info.NarSize, record.Info.NarSize);
        Assert.Equal(info.References, record.Info.References);
        Assert.True(record.Info.HasSelfReference);
        Assert.Equal(drv, record.Info.Deriver);
        Assert.Equal(info.Signatures, record.Info.Signatures);
        Assert.Equal(info.ContentAddress, record.Info.ContentAddress);
        Assert.True(record.Info.Ultimate);
        Assert.Equal(Provenance.Built, record.Provenance);
        Assert.Equal(PathTrust.Built, record.Trust);
        Assert.Equal(path, await store.FindByHashPartAsync(account, path.HashPart, default));
        Assert.Null(await store.FindByHashPartAsync(account, P("nothing").HashPart, default));
        Assert.Equal(new SortedSet<StorePath> { path }, await store.GetReferrersAsync(account, dependency, default));
        Assert.Contains(path, await store.GetReferrersAsync(account, path, default));
    }

    [Fact]
    public async Task Views_are_per_account()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var secret = P("secret");
        await store.RegisterAsync(alice, [New(Info(secret))], default);
        Assert.Empty(await store.GetPathsAsync(bob, [secret], default));
        Assert.Null(await store.FindByHashPartAsync(bob, secret.HashPart, default));
        Assert.Empty(await store.GetAllPathsAsync(bob, default));

        // Bob may hold different contents under the same (input-addressed) path.
        await store.RegisterAsync(bob, [New(Info(secret) with { NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, "other"), NarSize = 7 })], default);
        Assert.NotEqual((await store.GetPathsAsync(alice, [secret], default))[secret].Info.NarHash,
            (await store.GetPathsAsync(bob, [secret], default))[secret].Info.NarHash);
    }

    [Fact]
    public async Task Missing_references_refuse_the_whole_batch()
    {
        await using var store = await CreateAsync();
        var account = await store.GetOrCreateAccountAsync("alice", default);
        var good = P("good");
        var bad = P("bad");
        var absent = P("absent");
        var error = await Assert.ThrowsAsync<MissingReferencesException>(() => store.RegisterAsync(account, [New(Info(good)), New(Info(bad, absent))], default));
        Assert.Equal([absent], error.Missing);
        Assert.Empty(await store.GetAllPathsAsync(account, default));
    }

    [Fact]
    public async Task References_may_be_registered_earlier_in_the_same_batch_and_existing_paths_stay()
    {
        await using var store = await CreateAsync();
        var account = await store.GetOrCreateAccountAsync("alice", default);
        var a = P("a");
        var b = P("b");
        await store.RegisterAsync(account, [New(Info(a)), New(Info(b, a))], default);
        await store.RegisterAsync(account, [New(Info(a) with { NarSize = 999 })], default);
        Assert.Equal(Info(a).NarSize, (await store.GetPathsAsync(account, [a], default))[a].Info.NarSize);
    }

    [Fact]
    public async Task Derivation_outputs_and_derivers()
    {
        await using var store = await CreateAsync();
        var account = await store.GetOrCreateAccountAsync("alice", default);
        var drv = P("x.drv");
        var output = P("x");
        await store.RegisterAsync(account, [New(Info(drv), new Dictionary<string, StorePath?> { ["out"] = output, ["ca"] = null })], default);
        var outputs = await store.GetDerivationOutputsAsync(account, drv, default);
        Assert.Equal(output, outputs!["out"]);
        Assert.Null(outputs["ca"]);
        Assert.Null(await store.GetDerivationOutputsAsync(account, P("other.drv"), default));
        Assert.Equal(new SortedSet<StorePath> { drv }, await store.GetValidDeriversAsync(account, output, default));
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        Assert.Empty(await store.GetValidDeriversAsync(bob, output, default));
    }

    [Fact]
    public async Task Signatures_are_added_to_a_path()
    {
        await using var store = await CreateAsync();
        var account = await store.GetOrCreateAccountAsync("alice", default);
        var path = P("p");
        await store.RegisterAsync(account, [New(Info(path))], default);
        await store.AddSignaturesAsync(account, path, ["a:1", "b:2"], default);
        await store.AddSignaturesAsync(account, path, ["a:1"], default);
        Assert.Equal(["a:1", "b:2"], (await store.GetPathsAsync(account, [path], default))[path].Info.Signatures);
    }

    [Fact]
    public async Task The_path_records_version_moves_when_a_record_changes_or_goes_not_when_one_is_added()
    {
        await using var store = await CreateAsync();
        var account = await store.GetOrCreateAccountAsync("alice", default);
        var path = P("p");
        var start = store.PathRecordsVersion;
        await store.RegisterAsync(account, [New(Info(path))], default);
        Assert.Equal(start, store.PathRecordsVersion);

        await store.AddSignaturesAsync(account, path, ["a:1"], default);
        var signed = store.PathRecordsVersion;
        Assert.NotEqual(start, signed);

        await store.DeletePathsAsync(account, [path], default);
        Assert.NotEqual(signed, store.PathRecordsVersion);
    }

    [Fact]
    public async Task Graph_deletion_and_blob_references()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var a = P("a");
        var b = P("b");
        await store.RegisterAsync(alice, [New(Info(a)), New(Info(b, a))], default);
        await store.RegisterAsync(bob, [New(Info(a))], default);
        var graph = await store.GetGraphAsync(alice, default);
        Assert.Equal([a], graph.Single(n => n.Path == b).References);

        // A path others refer to cannot go first.
        await Assert.ThrowsAnyAsync<Exception>(() => store.DeletePathsAsync(alice, [a], default));
        await store.DeletePathsAsync(alice, [b, a], default);
        Assert.Empty(await store.GetAllPathsAsync(alice, default));

        // Bob still names a's content; nobody names b's.
        var referenced = await store.GetReferencedBlobsAsync([Info(a).NarHash, Info(b).NarHash], default);
        Assert.Equal([Info(a).NarHash], referenced);
    }

    [Fact]
    public async Task Roots_are_kept_per_account()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var path = P("p");
        await store.AddRootAsync(alice, RootKind.Permanent, "keep", path, default);
        await store.AddRootAsync(alice, RootKind.Indirect, "/home/alice/result", path, default);
        await store.AddRootAsync(alice, RootKind.Permanent, "keep", P("q"), default);
        var roots = await store.GetRootsAsync(alice, default);
        Assert.Equal(2, roots.Count);
        Assert.Equal(P("q"), roots.Single(r => r.Kind == RootKind.Permanent).Path);
        await store.RemoveRootAsync(alice, RootKind.Indirect, "/home/alice/result", default);
        Assert.Single(await store.GetRootsAsync(alice, default));
        Assert.Empty(await store.GetRootsAsync(await store.GetOrCreateAccountAsync("bob", default), default));
    }

    [Fact]
    public async Task Ten_thousand_paths_in_one_query()
    {
        await using var store = await CreateAsync();
        var account = await store.GetOrCreateAccountAsync("alice", default);
        var paths = Enumerable.Range(0, 10_000).Select(i => P($"p{i}", i)).ToList();
        await store.RegisterAsync(account, paths.Select(p => New(Info(p))).ToList(), default);
        var found = await store.GetPathsAsync(account, paths.Concat(Enumerable.Range(0, 100).Select(i => P($"absent{i}"))).ToList(), default);
        Assert.Equal(10_000, found.Count);
    }
}

/// <summary>The contract on SQLite (the embedded default).</summary>
public sealed class SqliteMetadataStoreTests : MetadataStoreContract, IDisposable
{
    private readonly Kiln.Nix.Tests.Support.TempDir _temp = new();

    protected override async Task<IMetadataStore> CreateAsync()
    {
        var store = new Kiln.Store.Metadata.Sqlite.SqliteMetadataStore(_temp[$"{Guid.NewGuid():N}.db"]);
        await store.MigrateAsync(default);
        return store;
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

        using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path}");
        connection.Open();
        using var count = connection.CreateCommand();
        count.CommandText = "SELECT count(*), (SELECT count(*) FROM accounts) FROM schema_migrations";
        using var reader = count.ExecuteReader();
        reader.Read();
        Assert.Equal(4, reader.GetInt64(0)); // 0001_initial, 0002_builds, 0003_ssh_keys, 0004_tokens_signing_keys: each applied once
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
