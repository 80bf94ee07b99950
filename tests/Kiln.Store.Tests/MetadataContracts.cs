using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

/// <summary>
/// What every metadata contract needs: an empty store from the provider under test, and path helpers. Each concern
/// of the metadata port has its own contract (accounts and credentials, settings, paths and roots, builds); each
/// provider's test classes derive from them and say how to make an empty store: SQLite now, PostgreSQL when Kiln
/// scales out.
/// </summary>
public abstract class MetadataContract
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
}

/// <summary>The contract of <see cref="IAccountMetadata"/>: accounts, SSH keys, tokens, public caches, signing keys.</summary>
public abstract class AccountMetadataContract : MetadataContract
{
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
    public async Task Tokens_public_caches_and_signing_keys_belong_to_accounts()
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
    }
}

/// <summary>The contract of <see cref="ISettingsMetadata"/>.</summary>
public abstract class SettingsMetadataContract : MetadataContract
{
    [Fact]
    public async Task A_service_secret_is_the_first_one_stored()
    {
        await using var store = await CreateAsync();
        Assert.Equal("first", await store.GetOrAddServerSecretAsync("build-key", "first", default));
        Assert.Equal("first", await store.GetOrAddServerSecretAsync("build-key", "second", default));
        Assert.Equal("other", await store.GetOrAddServerSecretAsync("ssh-host-key", "other", default));
        var racing = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(() => store.GetOrAddServerSecretAsync("raced", $"candidate-{i}", default))));
        Assert.Single(racing.Distinct());
    }

    [Fact]
    public async Task Upstream_settings_belong_to_accounts_and_change_field_by_field()
    {
        await using var store = await CreateAsync();
        var alice = (await store.TryCreateAccountAsync("alice", default))!;
        var bob = (await store.TryCreateAccountAsync("bob", default))!;
        Assert.Equal(new UpstreamSettings("", "", ""), await store.GetUpstreamSettingsAsync(alice.Id, default));
        await store.SetUpstreamSettingsAsync(alice.Id, "https://a https://b", "k:AAAA", null, default);
        await store.SetUpstreamSettingsAsync(alice.Id, null, null, "machine a login u password p", default);
        Assert.Equal(new UpstreamSettings("https://a https://b", "k:AAAA", "machine a login u password p"), await store.GetUpstreamSettingsAsync(alice.Id, default));
        Assert.Equal(new UpstreamSettings("", "", ""), await store.GetUpstreamSettingsAsync(bob.Id, default));
    }

    [Fact]
    public async Task Hierarchy_settings_are_kept_per_account_and_scope_replaced_and_removed()
    {
        await using var store = await CreateAsync();
        var alice = (await store.TryCreateAccountAsync("alice", default))!;
        var bob = (await store.TryCreateAccountAsync("bob", default))!;
        Assert.Empty(await store.GetSettingsAsync(alice.Id, default));
        await store.SetSettingAsync(alice.Id, new SettingRecord("", "timeout", "600", false), default);
        await store.SetSettingAsync(alice.Id, new SettingRecord("key:SHA256:k", "timeout", "60", true), default);
        await store.SetSettingAsync(alice.Id, new SettingRecord("", "timeout", "300", true), default); // replaced
        await store.SetSettingAsync(bob.Id, new SettingRecord("", "max-silent-time", "10", false), default);
        Assert.Equal([new SettingRecord("", "timeout", "300", true), new SettingRecord("key:SHA256:k", "timeout", "60", true)], await store.GetSettingsAsync(alice.Id, default));
        Assert.False(await store.UnsetSettingAsync(alice.Id, "", "max-silent-time", default));
        Assert.True(await store.UnsetSettingAsync(alice.Id, "", "timeout", default));
        Assert.Equal([new SettingRecord("key:SHA256:k", "timeout", "60", true)], await store.GetSettingsAsync(alice.Id, default));
        Assert.Equal([new SettingRecord("", "max-silent-time", "10", false)], await store.GetSettingsAsync(bob.Id, default));
        Assert.Equal([], await store.DeleteAccountAsync(alice.Id, default));
        Assert.Empty(await store.GetSettingsAsync(alice.Id, default));
    }

    [Fact]
    public async Task A_deleted_accounts_name_leaves_the_others_sharing_settings()
    {
        // Bob shares with alice and carol and trusts alice; alice is deleted, and a new account takes her name: it must
        // get none of what was given to her.
        await using var store = await CreateAsync();
        var alice = (await store.TryCreateAccountAsync("alice", default))!;
        var bob = (await store.TryCreateAccountAsync("bob", default))!;
        var dave = (await store.TryCreateAccountAsync("dave", default))!;
        await store.SetSettingAsync(bob.Id, new SettingRecord("", AccountSharing.ShareWith, "carol alice alice-2", false), default);
        await store.SetSettingAsync(bob.Id, new SettingRecord("", AccountSharing.TrustedAccounts, "alice", true), default);
        await store.SetSettingAsync(bob.Id, new SettingRecord("", "tags", "owner=alice", false), default);
        await store.SetSettingAsync(dave.Id, new SettingRecord("", AccountSharing.ShareWith, "alice", false), default);
        await store.SetSettingAsync(dave.Id, new SettingRecord("key:SHA256:k", AccountSharing.ShareWith, "alice", false), default); // (no such scope is read; left alone)
        await store.DeleteAccountAsync(alice.Id, default);
        Assert.Equal(
            [
                new SettingRecord("", AccountSharing.ShareWith, "carol alice-2", false), new SettingRecord("", "tags", "owner=alice", false),
                new SettingRecord("", AccountSharing.TrustedAccounts, "", true), // (left empty, and final: the operator's lock holds)
            ],
            await store.GetSettingsAsync(bob.Id, default));
        Assert.Equal([new SettingRecord("", AccountSharing.ShareWith, "", false), new SettingRecord("key:SHA256:k", AccountSharing.ShareWith, "alice", false)],
            await store.GetSettingsAsync(dave.Id, default));
    }
}

/// <summary>The contract of <see cref="IPathMetadata"/>: views, registration, lookups over several views, GC graph and roots.</summary>
public abstract class PathMetadataContract : MetadataContract
{
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

        // Held by several of the views: the first account asked for wins, whatever the ids.
        await store.RegisterAsync(carol, [New(Info(path) with { NarSize = 1, NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, "carol's") })], default);
        Assert.Equal(bob, (await store.FindPathByHashPartAsync([bob, carol], path.HashPart, default))!.Value.Account);
        Assert.Equal(carol, (await store.FindPathByHashPartAsync([carol, bob], path.HashPart, default))!.Value.Account);

        // A globally trusted record comes before untrusted ones of accounts asked for earlier; among trusted ones, the
        // accounts' order again.
        var dave = await store.GetOrCreateAccountAsync("dave", default);
        var erin = await store.GetOrCreateAccountAsync("erin", default);
        await store.RegisterAsync(dave, [New(Info(path)) with { Trust = PathTrust.Built, Provenance = Provenance.Built }], default);
        await store.RegisterAsync(erin, [New(Info(path)) with { Trust = PathTrust.SignedByTrustedKey }], default);
        Assert.Equal(dave, (await store.FindPathByHashPartAsync([bob, carol, dave, erin], path.HashPart, default))!.Value.Account);
        Assert.Equal(erin, (await store.FindPathByHashPartAsync([carol, erin, bob, dave], path.HashPart, default))!.Value.Account);
        Assert.Equal(PathTrust.Built, (await store.FindPathByHashPartAsync([bob, dave], path.HashPart, default))!.Value.Record.Trust);
        Assert.Equal(dave, (await store.FindPathByHashPartAsync([dave, erin, dave], path.HashPart, default))!.Value.Account);

        // Two names with one hash part in one account (an upload may name paths as it likes): the first name, always.
        var frank = await store.GetOrCreateAccountAsync("frank", default);
        var twin = StorePath.FromBaseName(path.HashPart + "-a-twin");
        await store.RegisterAsync(frank, [New(Info(path)), New(Info(twin))], default);
        Assert.Equal(twin, (await store.FindPathByHashPartAsync([frank], path.HashPart, default))!.Value.Record.Info.Path);
        Assert.Equal(Info(path).NarSize, await store.FindNarAsync([carol, carol, bob], Info(path).NarHash, default));

        var narHash = Info(path).NarHash;
        Assert.Null(await store.FindNarAsync([alice, carol], narHash, default));
        Assert.Equal(Info(path).NarSize, await store.FindNarAsync([alice, bob], narHash, default));
        // One account (the providers may ask it their own way): its own paths' NARs only.
        Assert.Equal(Info(path).NarSize, await store.FindNarAsync([bob], narHash, default));
        Assert.Null(await store.FindNarAsync([alice], narHash, default));

        await store.AddNarFileAsync("x.nar.xz", narHash, "xz", 42, default);
        Assert.Equal((narHash, "xz"), await store.FindNarFileAsync("x.nar.xz", default));
        Assert.Null(await store.FindNarFileAsync("y.nar.xz", default));
        Assert.Equal(["x.nar.xz"], await store.FindNarFilesAsync(["y.nar.xz", "x.nar.xz", "x.nar"], default));
        Assert.Equal(["x.nar.xz"], await store.RemoveNarFilesAsync([narHash], default));
        Assert.Null(await store.FindNarFileAsync("x.nar.xz", default));
        Assert.Empty(await store.FindNarFilesAsync(["x.nar.xz"], default));
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
    public async Task A_closure_is_its_roots_and_everything_they_refer_to_in_the_accounts_view()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var (libc, lib, app, tool, alone) = (P("libc"), P("lib"), P("app"), P("tool"), P("alone"));
        await store.RegisterAsync(alice, [New(Info(libc)), New(Info(lib, libc, lib)), New(Info(app, lib, libc)), New(Info(tool, lib)), New(Info(alone))], default);
        await store.RegisterAsync(bob, [New(Info(lib)), New(Info(app, lib))], default); // the same names, other references

        var closure = await store.GetClosureAsync(alice, [app, P("missing")], default);
        Assert.Equal(new[] { app, lib, libc }.Order(), closure.Keys.Order());
        var records = await store.GetPathsAsync(alice, [app, lib, libc], default);
        foreach (var (path, record) in records)
        {
            // Each record whole, as a lookup gives it.
            Assert.Equal(record.Info.NarHash, closure[path].Info.NarHash);
            Assert.Equal(record.Info.References, closure[path].Info.References);
            Assert.Equal(record.Info.HasSelfReference, closure[path].Info.HasSelfReference);
            Assert.Equal(record.Trust, closure[path].Trust);
        }

        Assert.Equal(new[] { tool, lib, libc, alone }.Order(), (await store.GetClosureAsync(alice, [tool, alone, tool], default)).Keys.Order());
        Assert.Equal(new[] { app, lib }.Order(), (await store.GetClosureAsync(bob, [app], default)).Keys.Order());
        Assert.Empty(await store.GetClosureAsync(bob, [tool], default));
        Assert.Empty(await store.GetClosureAsync(alice, [], default));
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
    public async Task Totals_count_every_views_records_and_each_distinct_NAR_once()
    {
        await using var store = await CreateAsync();
        Assert.Equal(new StoreTotals(0, 0, 0), await store.GetTotalsAsync(default));
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var shared = P("shared");
        var own = P("own");
        var big = Info(P("big")) with { NarSize = 5L << 32 }; // past 32 bits: the sum is a 64-bit figure on both databases
        await store.RegisterAsync(alice, [New(Info(shared)), New(Info(own)), New(big)], default);
        await store.RegisterAsync(bob, [New(Info(shared))], default); // the same content in a second view

        var totals = await store.GetTotalsAsync(default);
        Assert.Equal(4, totals.Paths);
        Assert.Equal(3, totals.Nars);
        Assert.Equal(Info(shared).NarSize + Info(own).NarSize + big.NarSize, totals.NarBytes);
    }

    [Fact]
    public async Task Storage_is_sampled_for_every_account_once_a_day_and_read_back_per_account()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var carol = await store.GetOrCreateAccountAsync("carol", default); // nothing stored: sampled as zero
        var shared = Info(P("shared"));
        var big = Info(P("big")) with { NarSize = 5L << 32 };
        await store.RegisterAsync(alice, [New(shared)], default);
        await store.RegisterAsync(bob, [New(shared)], default);
        await store.RecordStorageAsync(20_000, default);

        // Later the same day the sample is replaced; the next day gets its own.
        await store.RegisterAsync(alice, [New(big)], default);
        await store.RecordStorageAsync(20_000, default);
        await store.RegisterAsync(alice, [New(Info(P("more")))], default);
        await store.RecordStorageAsync(20_001, default);

        Assert.Equal([new StorageSample(20_000, 2, shared.NarSize + big.NarSize), new StorageSample(20_001, 3, shared.NarSize + big.NarSize + Info(P("more")).NarSize)],
            await store.GetStorageHistoryAsync(alice, 19_000, 21_000, default));
        Assert.Equal([new StorageSample(20_000, 1, shared.NarSize), new StorageSample(20_001, 1, shared.NarSize)],
            await store.GetStorageHistoryAsync(bob, 0, long.MaxValue, default));
        Assert.Equal([new StorageSample(20_001, 0, 0)], await store.GetStorageHistoryAsync(carol, 20_001, 20_002, default));

        // The figure now, as quotas read it: one aggregate per account.
        Assert.Equal((3L, shared.NarSize + big.NarSize + Info(P("more")).NarSize), await store.GetStorageAsync(alice, default));
        Assert.Equal((1L, shared.NarSize), await store.GetStorageAsync(bob, default));
        Assert.Equal((0L, 0L), await store.GetStorageAsync(carol, default));
        Assert.Empty(await store.GetStorageHistoryAsync(alice, 20_002, 21_000, default));
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
        var plain = P("plain.drv");
        await store.RegisterAsync(account, [New(Info(plain), new Dictionary<string, StorePath?>())], default);
        var batch = await store.GetDerivationOutputsAsync(account, [drv, plain, P("other.drv")], default);
        Assert.Equal(new SortedSet<StorePath> { drv, plain }, new SortedSet<StorePath>(batch.Keys));
        Assert.Equal(output, batch[drv]["out"]);
        Assert.Null(batch[drv]["ca"]);
        Assert.Empty(batch[plain]);
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

/// <summary>The contract of <see cref="IBuildMetadata"/>: builds from start to end, and the accounts they were for.</summary>
public abstract class BuildMetadataContract : MetadataContract
{
    private static BuildOutputRecord Output(string name) =>
        new(name, P(name), Info(P(name)).NarHash, 123, [P("dep")], null);

    [Fact]
    public async Task Deleting_an_account_removes_all_that_is_its_and_leaves_what_others_share_unlinked_from_it()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var (dep, top, drv) = (P("dep"), P("top"), P("top.drv"));
        await store.RegisterAsync(alice, [New(Info(dep)), New(Info(top, dep)), New(Info(drv), new Dictionary<string, StorePath?> { ["out"] = top })], default);
        await store.AddSignaturesAsync(alice, top, ["alice-key:c2ln"], default);
        await store.AddRootAsync(alice, RootKind.Pin, "release", top, default);
        await store.RegisterAsync(bob, [New(Info(dep))], default); // the same content in bob's view
        var key = (await store.AddSshKeyAsync(alice, Kiln.Store.Accounts.SshPublicKey.FromParts("ssh-ed25519",
            Convert.ToBase64String([0, 0, 0, 11, .. "ssh-ed25519"u8.ToArray(), 0, 0, 0, 32, .. Enumerable.Repeat((byte)9, 32)]), ""), Kiln.Store.Accounts.KeyPermissions.All, default));
        await store.AddTokenAsync(alice, "alice-token-hash", "ci", Kiln.Store.Accounts.KeyPermissions.All, null, default);
        await store.SetSigningKeyAsync(alice, "alice-key:secret", default);
        await store.RecordStorageAsync(20_000, default);

        var own = await store.StartBuildAsync("own", "own.drv", alice, 1, default);
        await store.TagBuildAsync(own, alice, [new BuildTag("ci-run", "1")], default);
        await store.FinishBuildAsync(own, new BuildEnd(true, "", "", 2, null, null, null, []), default);
        var shared = await store.StartBuildAsync("shared", "shared.drv", alice, 3, default);
        await store.AddBuildAccountAsync(shared, bob, default);
        await store.TagBuildAsync(shared, alice, [new BuildTag("ci-run", "1")], default);
        await store.TagBuildAsync(shared, bob, [new BuildTag("ci-run", "7")], default);
        await store.FinishBuildAsync(shared, new BuildEnd(true, "", "", 4, null, null, null, [Output("x")]), default);
        var bobs = await store.StartBuildAsync("bobs", "bobs.drv", bob, 5, default);
        await store.AddBuildAccountAsync(bobs, alice, default); // alice joined bob's build
        await store.FinishBuildAsync(bobs, new BuildEnd(true, "", "", 6, null, null, null, []), default);
        var latest = await store.StartBuildAsync("latest", "latest.drv", alice, 6, default); // the highest id: SQLite would give it out again
        await store.FinishBuildAsync(latest, new BuildEnd(false, "MiscFailure", "no", 7, null, null, null, []), default);

        Assert.Equal([own, latest], (await store.DeleteAccountAsync(alice, default))!.Order());

        Assert.Null(await store.FindAccountAsync("alice", default));
        Assert.Null(await store.FindTokenAsync("alice-token-hash", default));
        Assert.Null(await store.GetSshKeyAsync(key.Id, default));
        Assert.Null(await store.GetSigningKeyAsync(alice, default));
        Assert.Empty(await store.GetGraphAsync(alice, default));
        Assert.Empty(await store.GetRootsAsync(alice, default));
        Assert.Empty(await store.GetStorageHistoryAsync(alice, 0, long.MaxValue, default));
        Assert.Null(await store.GetBuildAsync(alice, own, default));
        Assert.Null(await store.FindSuccessfulBuildAsync("own", default));

        // Bob keeps his view, his builds and the build he shared, whose starter is now a nameless account.
        Assert.Equal([dep], (await store.GetGraphAsync(bob, default)).Select(n => n.Path));
        var kept = (await store.GetBuildAsync(bob, shared, default))!;
        Assert.Equal(("shared.drv", alice), (kept.DrvPath, kept.AccountId));
        var nameless = (await store.ListAccountsAsync(default)).Single(a => a.Id == alice).Name;
        Assert.True(Kiln.Store.Accounts.AccountName.IsDeleted(nameless), nameless);
        Assert.Equal([new BuildTag("ci-run", "7")], await store.GetBuildTagsAsync(shared, bob, default));
        Assert.Empty(await store.GetBuildTagsAsync(shared, alice, default));
        Assert.Equal(bob, (await store.GetBuildAsync(bob, bobs, default))!.AccountId);
        Assert.Equal([bobs, shared], (await store.ListBuildsAsync(bob, 10, default)).Select(b => b.Id));
        Assert.Equal([shared, bobs], (await store.FindBuildIdsAsync([own, shared, bobs, latest, 999_999], default)).Order());

        // The emptied build keeps its id and nothing else; ids are not given out again.
        var emptied = (await store.ListBuildsAsync(null, new BuildQuery { Before = own + 1, Limit = 1 }, default)).Single();
        Assert.Equal((own, "", "", 0L, 0), (emptied.Id, emptied.DrvPath, emptied.StepKey, emptied.Started, emptied.Outputs.Count));
        var again = await store.GetOrCreateAccountAsync("alice", default);
        Assert.True(again > alice);

        // An account made later under the name starts empty; alice is deleted once only.
        Assert.Empty(await store.ListBuildsAsync(again, 10, default));
        Assert.Empty(await store.GetGraphAsync(again, default));
        Assert.True(await store.StartBuildAsync("later", "later.drv", again, 7, default) > latest);
        Assert.Null(await store.DeleteAccountAsync(alice, default));
        Assert.Null(await store.DeleteAccountAsync(999_999, default));

        // Not while a build it was for runs (bob's, which it joined): nothing goes.
        var carol = await store.GetOrCreateAccountAsync("carol", default);
        var running = await store.StartBuildAsync("running", "running.drv", bob, 8, default);
        await store.AddBuildAccountAsync(running, carol, default);
        await store.RegisterAsync(carol, [New(Info(P("carols")))], default);
        var refused = await Assert.ThrowsAsync<Kiln.Protocol.KilnException>(() => store.DeleteAccountAsync(carol, default));
        Assert.Equal(Kiln.Protocol.ErrorKind.Conflict, refused.Kind);
        Assert.Single(await store.GetGraphAsync(carol, default));
        await store.FinishBuildAsync(running, new BuildEnd(true, "", "", 9, null, null, null, []), default);
        Assert.Empty((await store.DeleteAccountAsync(carol, default))!);
    }

    [Fact]
    public async Task The_usage_of_a_packages_latest_successful_builds_is_found_by_its_name_without_version()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        async Task BuildAsync(string drv, bool succeeded, long? peak, long started, long stopped)
        {
            var id = await store.StartBuildAsync("key-" + drv, drv, alice, started, default);
            await store.FinishBuildAsync(id, new BuildEnd(succeeded, succeeded ? "" : "PermanentFailure", "", stopped, 3_000_000, 1_000_000, peak, []), default);
        }

        await BuildAsync(P("hello-2.12.drv").BaseName, true, 100 << 20, 1000, 1010);
        await BuildAsync(P("hello-2.13.drv").BaseName, true, 300 << 20, 2000, 2004);
        await BuildAsync(P("hello-2.14.drv").BaseName, false, 900 << 20, 3000, 3001); // failed: not a measure of need
        await BuildAsync(P("hello-2.15.drv").BaseName, true, null, 3000, 3001); // no memory reported
        await BuildAsync(P("hello-world-1.0.drv").BaseName, true, 700 << 20, 4000, 4001); // another package
        Assert.Equal([new BuildUsage(300 << 20, 4_000_000, 4), new BuildUsage(100 << 20, 4_000_000, 10)], await store.RecentUsageAsync("hello", 5, default));
        Assert.Single(await store.RecentUsageAsync("hello", 1, default));
        Assert.Equal(700L << 20, Assert.Single(await store.RecentUsageAsync("hello-world", 5, default)).PeakMemory);
        Assert.Empty(await store.RecentUsageAsync("nobody", 5, default));
    }

    [Fact]
    public async Task A_paths_last_use_is_kept_per_account_and_only_moves_forward()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var (shared, own) = (P("shared"), P("own"));
        await store.RegisterAsync(alice, [New(Info(shared)), New(Info(own))], default);
        await store.RegisterAsync(bob, [New(Info(shared))], default);
        await store.TouchPathsAsync([(alice, shared, 5000), (alice, own, 4000), (alice, P("unknown"), 9000)], default);
        await store.TouchPathsAsync([(alice, shared, 4500), (alice, shared, 8000)], default); // earlier, or within the hour: no change
        await store.TouchPathsAsync([], default);
        var graph = (await store.GetGraphAsync(alice, default)).ToDictionary(n => n.Path, n => n.LastUsed);
        Assert.Equal((5000L, 4000L), (graph[shared], graph[own]));
        await store.TouchPathsAsync([(alice, shared, 9000)], default);
        Assert.Equal(9000, (await store.GetGraphAsync(alice, default)).Single(n => n.Path == shared).LastUsed);
        Assert.Equal(0, Assert.Single(await store.GetGraphAsync(bob, default)).LastUsed); // bob's record of it is his own
    }

    [Fact]
    public async Task Transfers_add_up_per_account_and_day_and_a_deleted_accounts_are_dropped()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        await store.AddTransfersAsync([new TransferSample(alice, 20_000, 100, 5), new TransferSample(bob, 20_000, 7, 0)], default);
        await store.AddTransfersAsync([new TransferSample(alice, 20_000, 1, 2), new TransferSample(alice, 20_002, 0, 9)], default); // a second front door's
        await store.AddTransfersAsync([], default);
        Assert.Equal([new TransferSample(alice, 20_000, 101, 7), new TransferSample(alice, 20_002, 0, 9)], await store.GetTransfersAsync(alice, 0, long.MaxValue, default));
        Assert.Equal([new TransferSample(alice, 20_002, 0, 9)], await store.GetTransfersAsync(alice, 20_001, 20_003, default));
        Assert.Equal([new TransferSample(bob, 20_000, 7, 0)], await store.GetTransfersAsync(bob, 0, long.MaxValue, default));

        // Deleted: its rows go, and bytes counted afterwards (a session still open) are not written for the empty account.
        await store.DeleteAccountAsync(bob, default);
        await store.AddTransfersAsync([new TransferSample(bob, 20_003, 1, 1)], default);
        Assert.Empty(await store.GetTransfersAsync(bob, 0, long.MaxValue, default));
    }

    [Fact]
    public async Task A_steps_latest_failure_for_an_account_is_found_by_its_kind_until_a_later_build_succeeds()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        async Task<long> BuildAsync(string key, long account, string failure)
        {
            var id = await store.StartBuildAsync(key, P(key + ".drv").BaseName, account, 100, default);
            await store.FinishBuildAsync(id, new BuildEnd(failure.Length == 0, failure, failure.Length == 0 ? "" : "builder failed", 110, null, null, null, []), default);
            return id;
        }

        var failed = await BuildAsync("k", alice, "PermanentFailure");
        Assert.Equal(failed, (await store.FindFailedBuildAsync("k", alice, ["PermanentFailure"], default))?.Id);
        Assert.Equal("builder failed", (await store.FindFailedBuildAsync("k", alice, ["TimedOut", "PermanentFailure"], default))!.Error);
        Assert.Null(await store.FindFailedBuildAsync("k", alice, ["TimedOut"], default)); // another kind
        Assert.Null(await store.FindFailedBuildAsync("k", bob, ["PermanentFailure"], default)); // not bob's
        Assert.Null(await store.FindFailedBuildAsync("other", alice, ["PermanentFailure"], default));
        Assert.Null(await store.FindFailedBuildAsync("k", alice, [], default));

        // Bob joined it: it ran under alice's limits, so it is not reused for him. A running build hides nothing.
        await store.AddBuildAccountAsync(failed, bob, default);
        Assert.Null(await store.FindFailedBuildAsync("k", bob, ["PermanentFailure"], default));
        await store.StartBuildAsync("k", P("k.drv").BaseName, alice, 120, default);
        Assert.Equal(failed, (await store.FindFailedBuildAsync("k", alice, ["PermanentFailure"], default))?.Id);
        await BuildAsync("k", alice, "");
        Assert.Null(await store.FindFailedBuildAsync("k", alice, ["PermanentFailure"], default));
        var bobs = await BuildAsync("k", bob, "TimedOut");
        Assert.Equal(bobs, (await store.FindFailedBuildAsync("k", bob, ["TimedOut"], default))?.Id); // his own
    }

    [Fact]
    public async Task The_cpu_an_account_started_since_a_time_is_summed_for_its_quota()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        async Task BuildAsync(long account, string key, long started, long? user, long? system)
        {
            var id = await store.StartBuildAsync(key, P(key + ".drv").BaseName, account, started, default);
            await store.FinishBuildAsync(id, new BuildEnd(false, "PermanentFailure", "", started + 5, user, system, null, []), default);
        }

        await BuildAsync(alice, "old", 999, 50_000_000, 0); // before the month
        await BuildAsync(alice, "a", 1000, 3_000_000, 1_000_000);
        await BuildAsync(alice, "b", 2000, null, 500_000); // failed builds count as well
        await BuildAsync(bob, "c", 1500, 7_000_000, 0); // another account's; a build it joined would not count either
        await store.StartBuildAsync("running", P("running.drv").BaseName, alice, 3000, default); // no figures yet
        Assert.Equal(4_500_000, await store.CpuMicrosecondsSinceAsync(alice, 1000, default));
        Assert.Equal(7_000_000, await store.CpuMicrosecondsSinceAsync(bob, 0, default));
        Assert.Equal(0, await store.CpuMicrosecondsSinceAsync(alice, 5000, default));

        // When a build began to run is kept beside when it was asked for (it may have waited in line).
        var waited = await store.StartBuildAsync("waited", P("waited.drv").BaseName, alice, 6000, default);
        Assert.Null((await store.GetBuildAsync(alice, waited, default))!.RanFrom);
        await store.FinishBuildAsync(waited, new BuildEnd(true, "", "", 6010, 1, 1, null, []) { RanFrom = 6004 }, default);
        Assert.Equal((6000L, 6004L, 6010L), ((await store.GetBuildAsync(alice, waited, default))!.Started, (await store.GetBuildAsync(alice, waited, default))!.RanFrom!.Value, (await store.GetBuildAsync(alice, waited, default))!.Stopped));
    }

    [Fact]
    public async Task A_build_is_recorded_when_it_starts_and_completed_when_it_ends()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var id = await store.StartBuildAsync("key-1", "x.drv", alice, 1000, default);
        var running = (await store.GetBuildAsync(alice, id, default))!;
        Assert.True(running.Running);
        Assert.False(running.Succeeded);
        Assert.Null(await store.FindSuccessfulBuildAsync("key-1", default));

        Assert.Equal(1, running.Attempts);
        await store.FinishBuildAsync(id, new BuildEnd(true, "", "", 1005, 1_500_000, 250_000, 1 << 20, [Output("x")], "agent-7", Attempts: 3), default);
        var done = (await store.FindSuccessfulBuildAsync("key-1", default))!;
        Assert.Equal(("agent-7", 3), (done.Agent, done.Attempts));
        Assert.Equal((id, false, true, 1000L, 1005L, (long?)1_500_000, (long?)(1 << 20)), (done.Id, done.Running, done.Succeeded, done.Started, done.Stopped, done.CpuUserMicroseconds, done.PeakMemory));
        var output = Assert.Single(done.Outputs);
        Assert.Equal(Output("x") with { References = output.References }, output);
        Assert.Equal([P("dep")], output.References);

        var failed = await store.StartBuildAsync("key-1", "x.drv", alice, 2000, default);
        await store.FinishBuildAsync(failed, new BuildEnd(false, "PermanentFailure", "exit 1", 2001, null, null, null, []), default);
        Assert.Equal(id, (await store.FindSuccessfulBuildAsync("key-1", default))!.Id);
        Assert.Equal([failed, id], (await store.ListBuildsAsync(alice, 10, default)).Select(b => b.Id));
    }

    [Fact]
    public async Task A_listing_pages_by_cursor_and_filters_by_state_and_start_time_within_the_account()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var ids = new List<long>();
        for (var i = 0; i < 7; i++)
        {
            var id = await store.StartBuildAsync($"k{i}", $"d{i}.drv", i == 3 ? bob : alice, 100 * i, default);
            if (i % 3 != 2)
            {
                await store.FinishBuildAsync(id, new BuildEnd(i % 3 == 0, i % 3 == 0 ? "" : "PermanentFailure", "", 100 * i + 1, null, null, null, []), default);
            }

            ids.Add(id);
        }

        async Task<long[]> ListAsync(long? account, BuildQuery query) => [.. (await store.ListBuildsAsync(account, query, default)).Select(b => b.Id)];

        // Alice's builds (not the one of Bob's), newest first, two at a time: each page continues below the last id.
        Assert.Equal([ids[6], ids[5]], await ListAsync(alice, new BuildQuery { Limit = 2 }));
        Assert.Equal([ids[4], ids[2]], await ListAsync(alice, new BuildQuery { Limit = 2, Before = ids[5] }));
        Assert.Equal([ids[1], ids[0]], await ListAsync(alice, new BuildQuery { Limit = 2, Before = ids[2] }));
        Assert.Empty(await ListAsync(alice, new BuildQuery { Limit = 2, Before = ids[0] }));
        Assert.Equal([ids[6], ids[0]], await ListAsync(alice, new BuildQuery { State = BuildState.Built }));
        Assert.Equal([ids[4], ids[1]], await ListAsync(alice, new BuildQuery { State = BuildState.Failed }));
        Assert.Equal([ids[5], ids[2]], await ListAsync(alice, new BuildQuery { State = BuildState.Running }));
        Assert.Equal([ids[5], ids[4], ids[2]], await ListAsync(alice, new BuildQuery { Since = 200, Until = 600 }));
        Assert.Equal([ids[3]], await ListAsync(bob, new BuildQuery()));
        Assert.Equal([ids[4], ids[3]], await ListAsync(null, new BuildQuery { Since = 300, Until = 500 }));
    }

    [Fact]
    public async Task A_listing_filters_by_the_derivations_name_ignoring_case_and_taking_wildcards_literally()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var hash = new string('h', 32);
        var names = new[] { "hello-2.12", "Hello-World", "libfoo_bar", "libfooxbar", "50%-off", "other" };
        var ids = new Dictionary<string, long>();
        foreach (var name in names)
        {
            ids[name] = await store.StartBuildAsync("k-" + name, $"{hash}-{name}.drv", alice, 1, default);
        }

        // A derivation whose hash holds the text is not a match: only the name is looked at.
        var inHash = await store.StartBuildAsync("k-hash", $"{"hello".PadRight(32, 'a')}-zzz.drv", alice, 1, default);
        async Task<long[]> NamedAsync(string text) => [.. (await store.ListBuildsAsync(alice, new BuildQuery { NameContains = text, Limit = 100 }, default)).Select(b => b.Id).Order()];
        long[] Ids(params string[] wanted) => [.. wanted.Select(n => ids[n]).Order()];

        Assert.Equal(Ids("hello-2.12", "Hello-World"), await NamedAsync("HELLO"));
        Assert.Equal(Ids("libfoo_bar"), await NamedAsync("foo_bar")); // '_' is not "any character"
        Assert.Equal(Ids("50%-off"), await NamedAsync("%-"));          // nor is '%' "anything"
        Assert.Empty(await NamedAsync("\\"));
        Assert.Empty(await NamedAsync("!"));                              // nor the escape character
        Assert.Equal(Ids("other"), await NamedAsync("other"));
        Assert.DoesNotContain(inHash, await NamedAsync("hello"));
        Assert.Contains(inHash, await NamedAsync("zzz"));
    }

    [Fact]
    public async Task Tags_are_kept_per_account_and_select_builds_in_listings()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var first = await store.StartBuildAsync("k1", "one.drv", alice, 1, default);
        var second = await store.StartBuildAsync("k2", "two.drv", alice, 2, default);
        await store.AddBuildAccountAsync(first, bob, default);
        BuildTag[] run7 = [new("ci-run", "7"), new("job", "lint")];
        await store.TagBuildAsync(first, alice, run7, default);
        await store.TagBuildAsync(first, alice, run7, default); // again: kept once
        await store.TagBuildAsync(first, alice, [new("ci-run", "8")], default); // a second run reused it
        await store.TagBuildAsync(second, alice, [new("ci-run", "8")], default);
        await store.TagBuildAsync(first, bob, [new("ci-run", "7 (bob's)")], default);
        await store.TagBuildAsync(second, alice, [], default);

        Assert.Equal([new("ci-run", "7"), new("ci-run", "8"), new("job", "lint")], await store.GetBuildTagsAsync(first, alice, default));
        Assert.Equal([new BuildTag("ci-run", "7 (bob's)")], await store.GetBuildTagsAsync(first, bob, default));
        async Task<long[]> TaggedAsync(long? account, string tag) =>
            [.. (await store.ListBuildsAsync(account, new BuildQuery { Tag = BuildTag.Parse(tag) }, default)).Select(b => b.Id)];
        Assert.Equal([first], await TaggedAsync(alice, "ci-run=7"));
        Assert.Equal([second, first], await TaggedAsync(alice, "ci-run=8"));
        Assert.Empty(await TaggedAsync(bob, "ci-run=7")); // Alice's tags are hers
        Assert.Equal([first], await TaggedAsync(bob, "ci-run=7 (bob's)"));
        Assert.Equal([first], await TaggedAsync(null, "job=lint"));
    }

    [Fact]
    public async Task Accounts_see_the_builds_they_were_for_and_no_others()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        var carol = await store.GetOrCreateAccountAsync("carol", default);
        var id = await store.StartBuildAsync("k", "y.drv", alice, 1, default);
        Assert.Null(await store.GetBuildAsync(bob, id, default));
        Assert.Empty(await store.ListBuildsAsync(bob, 10, default));

        await store.AddBuildAccountAsync(id, bob, default);
        await store.AddBuildAccountAsync(id, bob, default); // joining twice changes nothing
        Assert.Equal(id, (await store.GetBuildAsync(bob, id, default))!.Id);
        Assert.Equal([id], (await store.ListBuildsAsync(bob, 10, default)).Select(b => b.Id));
        Assert.Single(await store.ListBuildsAsync(null, 10, default));
        Assert.Null(await store.GetBuildAsync(carol, id, default));

        // The latest build of a derivation one of the accounts was for, successful ones first.
        Assert.Null(await store.FindLatestBuildAsync([carol], "y.drv", default));
        await store.FinishBuildAsync(id, new BuildEnd(true, "", "", 2, null, null, null, []), default);
        var later = await store.StartBuildAsync("k2", "y.drv", alice, 3, default);
        await store.FinishBuildAsync(later, new BuildEnd(false, "MiscFailure", "no", 4, null, null, null, []), default);
        Assert.Equal(id, (await store.FindLatestBuildAsync([carol, alice], "y.drv", default))!.Id);
        Assert.Equal(id, (await store.FindLatestBuildAsync([bob], "y.drv", default))!.Id);
        Assert.Null(await store.FindLatestBuildAsync([alice], "z.drv", default));
    }

    [Fact]
    public async Task Builds_left_running_by_a_stopped_server_are_recorded_as_failed()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var running = await store.StartBuildAsync("k", "r.drv", alice, 1, default);
        var finished = await store.StartBuildAsync("k", "r.drv", alice, 1, default);
        await store.FinishBuildAsync(finished, new BuildEnd(true, "", "", 2, null, null, null, []), default);
        Assert.Equal(1, await store.AbandonRunningBuildsAsync("the server stopped", 9, default));
        var record = (await store.GetBuildAsync(alice, running, default))!;
        Assert.Equal((false, false, "the server stopped", 9L), (record.Running, record.Succeeded, record.Error, record.Stopped));
        Assert.True((await store.GetBuildAsync(alice, finished, default))!.Succeeded);
        Assert.Equal(0, await store.AbandonRunningBuildsAsync("again", 10, default));
    }

    [Fact]
    public async Task A_step_is_claimed_by_one_front_door_until_its_claim_lapses()
    {
        await using var store = await CreateAsync();
        // Leases are reckoned on the database's clock (here, the same machine's).
        Assert.InRange(await store.ClockAsync(default) - DateTimeOffset.UtcNow.ToUnixTimeSeconds(), -5, 5);
        Assert.True(await store.ClaimStepAsync("k", "door-a", expires: 130, now: 100, default));
        Assert.False(await store.ClaimStepAsync("k", "door-b", expires: 135, now: 105, default));
        Assert.True(await store.ClaimStepAsync("k", "door-a", expires: 140, now: 110, default)); // its own: renewed
        Assert.True(await store.ClaimStepAsync("other", "door-b", expires: 140, now: 110, default));

        // Renewed in one statement, only the owner's.
        Assert.Equal(["k"], await store.RenewStepClaimsAsync(["k", "other"], "door-a", expires: 170, default)); // "other" is door-b's
        Assert.False(await store.ClaimStepAsync("k", "door-b", expires: 180, now: 150, default));
        Assert.True(await store.ClaimStepAsync("other", "door-c", expires: 180, now: 150, default)); // door-b's lapsed at 140

        // A running build is abandoned only once no live claim covers its step.
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var build = await store.StartBuildAsync("k", "k.drv", alice, 100, default);
        Assert.Equal(0, await store.AbandonRunningBuildsAsync("its front door went away", 160, default));
        Assert.Equal(1, await store.AbandonRunningBuildsAsync("its front door went away", 171, default));
        Assert.False((await store.GetBuildAsync(alice, build, default))!.Running);

        // Released: by step, or all of an owner's at once (a front door starting again).
        await store.ReleaseStepClaimsAsync("door-a", "k", default);
        Assert.True(await store.ClaimStepAsync("k", "door-b", expires: 200, now: 160, default));
        await store.ReleaseStepClaimsAsync("door-b", null, default);
        Assert.True(await store.ClaimStepAsync("k", "door-a", expires: 200, now: 160, default));
        Assert.False(await store.ClaimStepAsync("other", "door-a", expires: 200, now: 160, default)); // door-c's, live
    }

    // Periodic work one front door does for all: taken once per interval, by whoever comes first; another name is
    // another turn. (Within one second the interval cannot have passed; a zero interval gives it to every caller.)
    [Fact]
    public async Task A_turn_is_taken_once_per_interval_by_one_of_those_asking_at_once()
    {
        await using var store = await CreateAsync();
        var turns = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() => store.TakeTurnAsync("blob-sweep", 3600, default))));
        Assert.Single(turns, t => t);
        Assert.False(await store.TakeTurnAsync("blob-sweep", 3600, default));
        Assert.True(await store.TakeTurnAsync("another", 3600, default));
        Assert.True(await store.TakeTurnAsync("blob-sweep", 0, default));
        Assert.True(await store.TakeTurnAsync("blob-sweep", 0, default));
    }

    // max-jobs across front doors: a claimed step becomes one of its account's running builds while fewer than the
    // limit are, counted over every front door's live claims; the slot goes with the claim (released, lapsed, taken).
    [Fact]
    public async Task An_accounts_running_builds_are_counted_over_every_front_doors_claims()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        foreach (var (key, door) in new[] { ("a1", "door-a"), ("a2", "door-b"), ("a3", "door-a"), ("b1", "door-b") })
        {
            Assert.True(await store.ClaimStepAsync(key, door, expires: 200, now: 100, default));
        }

        Assert.True(await store.ClaimAccountSlotAsync("a1", "door-a", alice, maxJobs: 2, now: 100, default));
        Assert.True(await store.ClaimAccountSlotAsync("a2", "door-b", alice, maxJobs: 2, now: 100, default));
        Assert.False(await store.ClaimAccountSlotAsync("a3", "door-a", alice, maxJobs: 2, now: 100, default)); // two run, on two front doors
        Assert.True(await store.ClaimAccountSlotAsync("a1", "door-a", alice, maxJobs: 2, now: 100, default)); // its own, held already
        Assert.True(await store.ClaimAccountSlotAsync("b1", "door-b", bob, maxJobs: 1, now: 100, default)); // another account's own count
        Assert.False(await store.ClaimAccountSlotAsync("a3", "door-b", alice, maxJobs: 5, now: 100, default)); // not door-b's claim

        // Released with its claim: a slot is free again.
        await store.ReleaseStepClaimsAsync("door-b", "a2", default);
        Assert.True(await store.ClaimAccountSlotAsync("a3", "door-a", alice, maxJobs: 2, now: 100, default));

        Assert.Equal(2, await store.CountAccountSlotsAsync(alice, now: 100, default));
        Assert.Equal(1, await store.CountAccountSlotsAsync(bob, now: 100, default));

        // Renewed with its claim; lapsed with it, it no longer counts, and a front door taking the step over starts without it.
        Assert.Equal(["a1"], await store.RenewStepClaimsAsync(["a1"], "door-a", expires: 400, default));
        Assert.Equal(1, await store.CountAccountSlotsAsync(alice, now: 300, default)); // a3 lapsed at 200
        Assert.True(await store.ClaimStepAsync("a4", "door-b", expires: 500, now: 300, default));
        Assert.False(await store.ClaimAccountSlotAsync("a4", "door-b", alice, maxJobs: 1, now: 300, default)); // a1 still live at 300
        Assert.True(await store.ClaimAccountSlotAsync("a4", "door-b", alice, maxJobs: 2, now: 300, default));
        Assert.True(await store.ClaimStepAsync("a3", "door-c", expires: 500, now: 300, default)); // taken over: without a3's slot
        Assert.Equal(2, await store.CountAccountSlotsAsync(alice, now: 300, default));
        Assert.False(await store.ClaimAccountSlotAsync("a3", "door-c", alice, maxJobs: 2, now: 300, default)); // a1, a4
        Assert.True(await store.ClaimAccountSlotAsync("a3", "door-c", alice, maxJobs: 3, now: 300, default));
        Assert.False(await store.ClaimAccountSlotAsync("a5", "door-c", alice, maxJobs: 4, now: 300, default)); // no claim on a5
        Assert.True(await store.ClaimStepAsync("a5", "door-c", expires: 500, now: 300, default));
        Assert.False(await store.ClaimAccountSlotAsync("a5", "door-c", alice, maxJobs: 3, now: 300, default)); // a1, a4, a3
    }

    // A front door cut off from the database lapses with a slot; claiming the step again (its client asked again) must
    // not bring the slot back uncounted while another front door has given it out since.
    [Fact]
    public async Task A_lapsed_claim_claimed_again_by_its_owner_holds_no_slot()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        Assert.True(await store.ClaimStepAsync("k", "door-a", expires: 200, now: 100, default));
        Assert.True(await store.ClaimAccountSlotAsync("k", "door-a", alice, maxJobs: 1, now: 100, default));
        Assert.True(await store.ClaimStepAsync("j", "door-b", expires: 500, now: 300, default));
        Assert.True(await store.ClaimAccountSlotAsync("j", "door-b", alice, maxJobs: 1, now: 300, default)); // k lapsed at 200
        Assert.True(await store.ClaimStepAsync("k", "door-a", expires: 600, now: 300, default));
        Assert.Equal(1, await store.CountAccountSlotsAsync(alice, now: 300, default));
        Assert.False(await store.ClaimAccountSlotAsync("k", "door-a", alice, maxJobs: 1, now: 300, default));
    }

    [Fact]
    public async Task Of_front_doors_claiming_an_accounts_last_slot_at_once_exactly_one_gets_it()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        for (var i = 0; i < 8; i++)
        {
            Assert.True(await store.ClaimStepAsync($"k{i}", $"door-{i}", 200, 100, default));
        }

        var slots = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(() => store.ClaimAccountSlotAsync($"k{i}", $"door-{i}", alice, 1, 100, default))));
        Assert.Single(slots, s => s);
    }

    [Fact]
    public async Task Of_front_doors_claiming_a_step_at_once_exactly_one_gets_it()
    {
        await using var store = await CreateAsync();
        var claims = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => Task.Run(() => store.ClaimStepAsync("k", $"door-{i}", 200, 100, default))));
        Assert.Single(claims, c => c);
    }

    // The queue board: a front door reads an account's entries that the others published (its own are its scheduler's
    // to give), only while their publications live; a new publication replaces the entries, a renewal keeps them.
    [Fact]
    public async Task The_queue_board_shows_an_account_the_entries_other_front_doors_published_while_they_live()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        var bob = await store.GetOrCreateAccountAsync("bob", default);
        BoardEntry[] fromA = [new(alice, 7, "/nix/store/aaaa-a.drv", "running", null, "agent-1"), new(bob, 8, "/nix/store/bbbb-b.drv", "waiting", 2, null)];
        await store.PublishQueueAsync("door-a", fromA, waiting: 3, farm: "{\"a\":1}", expires: 200, default);
        await store.PublishQueueAsync("door-b", [new(alice, null, "/nix/store/cccc-c.drv", "account-limit", null, null)], waiting: 1, farm: "{\"b\":1}", expires: 150, default);

        var seenByC = await store.ReadBoardAsync(alice, "door-c", now: 100, default);
        Assert.Equal(4, seenByC.Waiting);
        Assert.Equal([new PublishedEntry("door-a", fromA[0]), new PublishedEntry("door-b", new(alice, null, "/nix/store/cccc-c.drv", "account-limit", null, null))], seenByC.Entries);
        Assert.Equal([("door-a", "{\"a\":1}"), ("door-b", "{\"b\":1}")], await store.ReadFarmsAsync("door-c", now: 100, default));
        Assert.Equal([("door-b", "{\"b\":1}")], await store.ReadFarmsAsync("door-a", now: 100, default));
        var seenByA = await store.ReadBoardAsync(alice, "door-a", now: 100, default);
        Assert.Equal(1, seenByA.Waiting);
        Assert.Equal(["door-b"], seenByA.Entries.Select(e => e.Owner));
        Assert.Equal([new PublishedEntry("door-a", fromA[1])], (await store.ReadBoardAsync(bob, "door-c", now: 100, default)).Entries);

        // door-b's publication lapsed at 150; door-a's renewal (entries null) keeps its entries, a new one replaces them.
        var later = await store.ReadBoardAsync(alice, "door-c", now: 160, default);
        Assert.Equal(3, later.Waiting);
        Assert.Equal(["door-a"], later.Entries.Select(e => e.Owner));
        await store.PublishQueueAsync("door-a", null, waiting: 0, farm: null, expires: 300, default);
        Assert.Equal([new PublishedEntry("door-a", fromA[0])], (await store.ReadBoardAsync(alice, "door-c", now: 250, default)).Entries);
        Assert.Equal([("door-a", "{\"a\":1}")], await store.ReadFarmsAsync("door-c", now: 250, default)); // kept with a renewal (farm null)
        await store.PublishQueueAsync("door-a", [], waiting: 0, farm: null, expires: 300, default);
        Assert.Empty((await store.ReadBoardAsync(alice, "door-c", now: 250, default)).Entries);
        Assert.Empty((await store.ReadBoardAsync(bob, "door-c", now: 250, default)).Entries);
    }

    // A cancel asked of a front door is taken by that front door once. Publications long expired, their entries, and
    // cancels nobody took are forgotten (a front door gone for good).
    [Fact]
    public async Task A_cancel_asked_of_a_front_door_is_taken_by_it_once_and_what_lapsed_is_forgotten()
    {
        await using var store = await CreateAsync();
        var alice = await store.GetOrCreateAccountAsync("alice", default);
        await store.AskCancelAsync("door-a", alice, 7, null, now: 90, default);
        await store.AskCancelAsync("door-a", alice, null, "/nix/store/aaaa-a.drv", now: 100, default);
        await store.AskCancelAsync("door-b", alice, 9, null, now: 100, default);
        Assert.Equal([new BoardCancel(alice, 7, null), new BoardCancel(alice, null, "/nix/store/aaaa-a.drv")],
            (await store.TakeCancelsAsync("door-a", default)).OrderBy(c => c.BuildId is null));
        Assert.Empty(await store.TakeCancelsAsync("door-a", default));

        await store.AskCancelAsync("door-c", alice, 10, null, now: 200, default);
        await store.PublishQueueAsync("door-old", [new(alice, 1, "/nix/store/aaaa-a.drv", "running", null, null)], waiting: 0, farm: null, expires: 150, default);
        await store.PublishQueueAsync("door-new", [new(alice, 2, "/nix/store/bbbb-b.drv", "running", null, null)], waiting: 0, farm: null, expires: 250, default);
        await store.ForgetLapsedAsync(before: 160, default);
        Assert.Empty(await store.TakeCancelsAsync("door-b", default)); // asked at 100
        Assert.Equal([new BoardCancel(alice, 10, null)], await store.TakeCancelsAsync("door-c", default));
        Assert.Equal(["door-new"], (await store.ReadBoardAsync(alice, "door-x", now: 0, default)).Entries.Select(e => e.Owner));
        await store.PublishQueueAsync("door-old", null, waiting: 0, farm: null, expires: 300, default); // back: its entries went with it
        Assert.Equal(["door-new"], (await store.ReadBoardAsync(alice, "door-x", now: 200, default)).Entries.Select(e => e.Owner));
    }
}

/// <summary>The contract of <see cref="IAgentMetadata"/>: agent tokens (hashes, unique names, revocation) and agents' last known state.</summary>
public abstract class AgentMetadataContract : MetadataContract
{
    [Fact]
    public async Task Agent_tokens_are_found_by_hash_until_revoked_and_names_stay_taken()
    {
        await using var store = await CreateAsync();
        var token = await store.AddAgentTokenAsync("farm", "hash-1", default);
        Assert.NotNull(token);
        Assert.Null(await store.AddAgentTokenAsync("farm", "hash-2", default));
        Assert.Equal(token, await store.FindAgentTokenAsync("hash-1", default));
        Assert.Null(await store.FindAgentTokenAsync("hash-2", default));
        Assert.NotNull(await store.AddAgentTokenAsync("ci", "hash-3", default));

        Assert.True(await store.RevokeAgentTokenAsync("farm", default));
        Assert.False(await store.RevokeAgentTokenAsync("farm", default));
        Assert.False(await store.RevokeAgentTokenAsync("nobody", default));
        Assert.Null(await store.FindAgentTokenAsync("hash-1", default));
        Assert.Null(await store.AddAgentTokenAsync("farm", "hash-4", default));
        var listed = await store.ListAgentTokensAsync(default);
        Assert.Equal(["ci", "farm"], listed.Select(t => t.Name));
        Assert.NotNull(listed[1].Revoked);
        Assert.Null(listed[0].Revoked);
    }

    [Fact]
    public async Task An_agents_state_is_kept_by_name_and_replaced_when_reported_again()
    {
        await using var store = await CreateAsync();
        var one = new AgentRecord
        {
            Name = "one",
            TokenName = "farm",
            Systems = ["x86_64-linux", "i686-linux"],
            Features = ["kvm"],
            Slots = 4,
            SlotsBusy = 1,
            Cores = 8,
            MemoryBytes = 16L << 30,
            InputCacheBytes = 5L << 30,
            BuildsRun = 12,
            LastSeen = 1700000000,
            FrontDoor = "door-a",
            Connected = true,
        };
        await store.ReportAgentAsync(one, default);
        await store.ReportAgentAsync(one with { Name = "two", Features = [] }, default);
        await store.ReportAgentAsync(one with { SlotsBusy = 0, BuildsRun = 13, Connected = false }, default);
        var agents = await store.ListAgentsAsync(default);
        Assert.Equal(["one", "two"], agents.Select(a => a.Name));
        var first = agents[0];
        Assert.Equal((one.TokenName, 4, 0, 8, 16L << 30, 5L << 30, 13L, 1700000000L, "door-a", false),
            (first.TokenName, first.Slots, first.SlotsBusy, first.Cores, first.MemoryBytes, first.InputCacheBytes, first.BuildsRun, first.LastSeen, first.FrontDoor, first.Connected));
        Assert.Equal(["x86_64-linux", "i686-linux"], first.Systems);
        Assert.Equal(["kvm"], first.Features);
        Assert.Empty(agents[1].Features);
    }

    [Fact]
    public async Task Builders_are_kept_by_name_until_removed()
    {
        await using var store = await CreateAsync();
        var mac = new BuilderRecord
        {
            Name = "mac",
            Uri = "ssh-ng://nix@mac.example:2222",
            Systems = ["aarch64-darwin", "x86_64-darwin"],
            Features = ["big-parallel"],
            MaxJobs = 3,
            SshKey = "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n-----END OPENSSH PRIVATE KEY-----\n",
            HostKey = "ssh-ed25519 AAAAC3Nza",
            Created = 1700000000,
        };
        Assert.True(await store.AddBuilderAsync(mac, default));
        Assert.False(await store.AddBuilderAsync(mac with { Uri = "ssh-ng://other" }, default));
        Assert.True(await store.AddBuilderAsync(mac with { Name = "arm", Features = [], HostKey = "" }, default));
        var listed = await store.ListBuildersAsync(default);
        Assert.Equal(["arm", "mac"], listed.Select(b => b.Name));
        var back = listed[1];
        Assert.Equal((mac.Uri, mac.MaxJobs, mac.SshKey, mac.HostKey, mac.Created), (back.Uri, back.MaxJobs, back.SshKey, back.HostKey, back.Created));
        Assert.Equal(mac.Systems, back.Systems);
        Assert.Equal(mac.Features, back.Features);
        Assert.Empty(listed[0].Features);

        Assert.True(await store.RemoveBuilderAsync("mac", default));
        Assert.False(await store.RemoveBuilderAsync("mac", default));
        Assert.Equal(["arm"], (await store.ListBuildersAsync(default)).Select(b => b.Name));
    }
}

/// <summary>The contract of <see cref="IPushMetadata"/>: the queue of pushes to accounts' caches, its leases and retries.</summary>
public abstract class PushMetadataContract : MetadataContract
{
    [Fact]
    public async Task A_claim_passes_over_the_accounts_it_is_told_to()
    {
        await using var store = await CreateAsync();
        var alice = (await store.TryCreateAccountAsync("alice", default))!;
        var bob = (await store.TryCreateAccountAsync("bob", default))!;
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        await store.AddPushAsync(alice.Id, 1, "file:///a", [P("out").BaseName], default);
        var bobs = await store.AddPushAsync(bob.Id, 2, "file:///b", [P("out").BaseName], default);
        Assert.Equal([bobs], (await store.ClaimPushesAsync(now + 1, now + 100, 10, default, [alice.Id, 12345])).Select(p => p.Id));
        Assert.Empty(await store.ClaimPushesAsync(now + 1, now + 100, 10, default, [alice.Id]));
        Assert.Equal(alice.Id, Assert.Single(await store.ClaimPushesAsync(now + 1, now + 100, 10, default, [])).AccountId);
    }

    [Fact]
    public async Task Pushes_are_claimed_once_while_leased_retried_when_due_and_listed_per_account_and_build()
    {
        await using var store = await CreateAsync();
        var alice = (await store.TryCreateAccountAsync("alice", default))!;
        var bob = (await store.TryCreateAccountAsync("bob", default))!;
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var first = await store.AddPushAsync(alice.Id, 7, "file:///srv/a", [P("out").BaseName, P("dev").BaseName], default);
        var second = await store.AddPushAsync(alice.Id, 8, "https://cache.example/x?compression=zstd", [P("lib").BaseName], default);
        var bobs = await store.AddPushAsync(bob.Id, 7, "file:///srv/b", [P("out").BaseName], default);

        // Two claimers at once get different rows; the leased rows are not claimed again until the lease ends.
        var claims = await Task.WhenAll(store.ClaimPushesAsync(now + 1, now + 100, 2, default), store.ClaimPushesAsync(now + 1, now + 100, 2, default));
        var claimed = claims.SelectMany(c => c).ToList();
        Assert.Equal(3, claimed.Count);
        Assert.Equal(3, claimed.Select(c => c.Id).Distinct().Count());
        Assert.Empty(await store.ClaimPushesAsync(now + 50, now + 100, 10, default));
        var one = claimed.Single(c => c.Id == first);
        Assert.Equal((alice.Id, 7L, "file:///srv/a", PushState.Queued, 1), (one.AccountId, one.BuildId, one.Target, one.State, one.Attempts));
        Assert.Equal([P("out").BaseName, P("dev").BaseName], one.Paths);

        await store.FinishPushAsync(first, 1, PushState.Done, 2, "", 0, default);
        await store.FinishPushAsync(second, 1, PushState.Queued, 0, "cannot reach cache.example", now + 10, default);
        await store.FinishPushAsync(bobs, 1, PushState.Failed, 0, "no signing key", 0, default);
        var retried = Assert.Single(await store.ClaimPushesAsync(now + 10, now + 200, 10, default));
        Assert.Equal((second, 2, "cannot reach cache.example"), (retried.Id, retried.Attempts, retried.Error));
        Assert.Empty(await store.ClaimPushesAsync(now + 150, now + 300, 10, default)); // done and failed ones never come back

        // A front door whose lease ran out (its try was 1; the row is on try 2 now) changes nothing when it ends late.
        await store.FinishPushAsync(second, 1, PushState.Done, 9, "", 0, default);
        Assert.Equal((PushState.Queued, 2), ((await store.GetPushesAsync(alice.Id, 8, 1, default))[0].State, (await store.GetPushesAsync(alice.Id, 8, 1, default))[0].Attempts));
        // A claimed push given back untried is due again with its try uncounted.
        await store.ReleasePushAsync(second, 2, now + 20, default);
        var again = Assert.Single(await store.ClaimPushesAsync(now + 20, now + 400, 10, default));
        Assert.Equal((second, 2), (again.Id, again.Attempts));

        var listed = await store.GetPushesAsync(alice.Id, 0, 10, default);
        Assert.Equal([second, first], listed.Select(p => p.Id));
        var done = Assert.Single(await store.GetPushesAsync(alice.Id, 7, 10, default));
        Assert.Equal((PushState.Done, 2L, ""), (done.State, done.Uploaded, done.Error));
        Assert.True(done.Finished >= now);
        Assert.Equal(PushState.Failed, Assert.Single(await store.GetPushesAsync(bob.Id, 7, 10, default)).State);
        Assert.Single(await store.GetPushesAsync(alice.Id, 0, 1, default));

        // Ended pushes are pruned by when they ended; queued ones never.
        Assert.Equal(0, await store.PrunePushesAsync(now - 100, default));
        Assert.Equal(2, await store.PrunePushesAsync(DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 1, default)); // alice's done, bob's failed
        Assert.Equal([second], (await store.GetPushesAsync(alice.Id, 0, 10, default)).Select(p => p.Id));
        Assert.Empty(await store.GetPushesAsync(bob.Id, 0, 10, default));

        // The account's push key (a service secret named after it) goes with it; another account's stays.
        await store.GetOrAddServerSecretAsync($"push-ssh-key:{alice.Id}", "alice's key", default);
        await store.GetOrAddServerSecretAsync($"push-ssh-key:{bob.Id}", "bob's key", default);
        await store.DeleteAccountAsync(alice.Id, default);
        Assert.Empty(await store.GetPushesAsync(alice.Id, 0, 10, default));
        Assert.Equal("a new one", await store.GetOrAddServerSecretAsync($"push-ssh-key:{alice.Id}", "a new one", default));
        Assert.Equal("bob's key", await store.GetOrAddServerSecretAsync($"push-ssh-key:{bob.Id}", "another", default));
    }
}
