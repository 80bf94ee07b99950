using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

/// <summary>
/// trusted-accounts and share-with: a path moves from Bob's store into Alice's only when Alice trusts Bob and Bob
/// shares with Alice; trust alone never lets Alice read what Bob holds, sharing alone never makes her take it.
/// </summary>
public sealed class AccountSharingTests : IAsyncLifetime
{
    private static readonly byte[] LibNar = File.ReadAllBytes(Repo.Golden("nar", "hello.txt.nar"));
    private static readonly byte[] AppNar = File.ReadAllBytes(Repo.Golden("nar", "script.sh.nar"));

    private readonly TempDir _temp = new();
    private KilnStore _store = null!;

    private static readonly StorePath Lib = MetadataContract.P("bobs-lib");
    private static readonly StorePath App = MetadataContract.P("bobs-app");

    public async ValueTask InitializeAsync()
    {
        _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"] }, default);
        using var bob = await _store.OpenViewAsync("bob", default);
        await bob.AddToStoreAsync(Declared(Lib, LibNar), new MemoryStream(LibNar), false, false, default);
        await bob.AddToStoreAsync(Declared(App, AppNar, Lib), new MemoryStream(AppNar), false, false, default);
    }

    public async ValueTask DisposeAsync()
    {
        await _store.DisposeAsync();
        _temp.Dispose();
    }

    private static ValidPathInfo Declared(StorePath path, byte[] nar, params StorePath[] references) => new()
    {
        Path = path,
        NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar),
        NarSize = nar.Length,
        References = new SortedSet<StorePath>(references),
    };

    private async Task SetAsync(string account, string setting, string value)
    {
        using var view = await _store.OpenViewAsync(account, default);
        await _store.Settings.SetSettingAsync(view.AccountId, new SettingRecord("", setting, AccountSharing.Canonical(value), false), default);
    }

    // QueryMissing's answer for a derivation of the view's own whose output is that path (as if it built it).
    private static async Task<(StorePath Drv, MissingPaths Missing)> QueryMissingOfAsync(StoreView view, StorePath output)
    {
        var derivation = new Derivation { Name = output.Name, Platform = "x86_64-linux", Builder = "/bin/sh" };
        derivation.Outputs["out"] = new DerivationOutput(output.ToString(), "", "");
        derivation.Environment["out"] = output.ToString();
        var drv = await view.AddContentAddressedAsync($"{output.Name}.drv", ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
            new MemoryStream(ATerm.PrintBytes(derivation)), new SortedSet<StorePath>(), false, default);
        return (drv.Path, await view.QueryMissingAsync([new DerivedPath.Built(drv.Path, null)], new ListLog(), default));
    }

    // What a new session of the account takes of Bob's app.
    private async Task<IReadOnlySet<StorePath>> SubstituteAppAsync(string account)
    {
        using var view = await _store.OpenViewAsync(account, default);
        return await view.SubstituteAsync([App], default);
    }

    [Fact]
    public async Task A_path_moves_only_where_one_account_trusts_and_the_other_shares()
    {
        Assert.Empty(await SubstituteAppAsync("alice")); // neither

        // Mallory trusts Bob (she wants his store): Bob shares with nobody, so she gets nothing.
        await SetAsync("mallory", AccountSharing.TrustedAccounts, "bob");
        Assert.Empty(await SubstituteAppAsync("mallory"));

        // Bob shares with Alice, who does not trust him yet: nothing moves.
        await SetAsync("bob", AccountSharing.ShareWith, "alice carol none");
        Assert.Empty(await SubstituteAppAsync("alice"));
        Assert.Empty(await SubstituteAppAsync("mallory")); // (still not shared with her)

        // "none" is no account (it is what listings show for none), whoever takes that name.
        Assert.Equal("", AccountSharing.Canonical(" none "));
        Assert.Equal("alice carol", AccountSharing.Canonical("alice none carol"));
        await SetAsync("none", AccountSharing.TrustedAccounts, "bob");
        Assert.Empty(await SubstituteAppAsync("none"));

        // Alice trusts Bob (after an account that does not exist, and herself): the app and its closure move.
        await SetAsync("alice", AccountSharing.TrustedAccounts, "nobody alice bob");
        using var alice = await _store.OpenViewAsync("alice", default);
        var taken = await alice.TakeSharedAsync([App], default);
        Assert.Equal(new Dictionary<StorePath, string> { [App] = "bob", [Lib] = "bob" }, taken);
        var records = await alice.GetRecordsAsync([App, Lib], default);
        Assert.All(records.Values, r => Assert.Equal((Provenance.Shared, PathTrust.TrustedAccount), (r.Provenance, r.Trust)));
        // Registered now (the collector's grace period and the account's retention count from now, not from Bob's upload).
        Assert.All(records.Values, r => Assert.InRange(r.Info.RegistrationTime, DateTimeOffset.UtcNow.ToUnixTimeSeconds() - 60, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 1));
        Assert.Equal([Lib], records[App].Info.References);
        var blob = await alice.OpenNarAsync(App, default);
        Assert.NotNull(blob);
        await blob.DisposeAsync();

        // Bob's own records are as they were.
        using var bob = await _store.OpenViewAsync("bob", default);
        Assert.All((await bob.GetRecordsAsync([App, Lib], default)).Values, r => Assert.Equal((Provenance.Uploaded, PathTrust.Untrusted), (r.Provenance, r.Trust)));
        Assert.Empty(await SubstituteAppAsync("mallory"));
        Assert.Empty(await SubstituteAppAsync("carol")); // shared with, but she does not trust him
    }

    [Fact]
    public async Task A_closure_is_completed_from_several_sharers_first_preferred()
    {
        // Carol comes first in Alice's list and has the library only; Bob has the app and the library.
        await SetAsync("bob", AccountSharing.ShareWith, "alice");
        await SetAsync("carol", AccountSharing.ShareWith, "alice");
        await SetAsync("alice", AccountSharing.TrustedAccounts, "carol bob");
        using (var carol = await _store.OpenViewAsync("carol", default))
        {
            await carol.AddToStoreAsync(Declared(Lib, LibNar), new MemoryStream(LibNar), false, false, default);
        }

        using var alice = await _store.OpenViewAsync("alice", default);
        Assert.Equal(new Dictionary<StorePath, string> { [App] = "bob", [Lib] = "carol" }, await alice.TakeSharedAsync([App], default));
        Assert.Empty(await alice.TakeSharedAsync([App], default)); // (held now: nothing more to take)
        Assert.Empty(await alice.TakeSharedAsync([MetadataContract.P("nobody-has-it")], default));
    }

    [Fact]
    public async Task What_a_sharer_took_from_another_account_is_not_passed_on_and_QueryMissing_says_so_too()
    {
        // Found in review: Carol shares with Bob only; Bob took her library; Bob shares with Alice. Alice must not get
        // Carol's library through Bob (Carol never shared with her), nor Bob's app, whose closure needs it.
        var library = MetadataContract.P("carols-lib");
        var app = MetadataContract.P("bobs-app-on-carols-lib");
        using (var carol = await _store.OpenViewAsync("carol", default))
        {
            await carol.AddToStoreAsync(Declared(library, LibNar), new MemoryStream(LibNar), false, false, default);
        }

        await SetAsync("carol", AccountSharing.ShareWith, "bob");
        await SetAsync("bob", AccountSharing.TrustedAccounts, "carol");
        await SetAsync("bob", AccountSharing.ShareWith, "alice");
        await SetAsync("alice", AccountSharing.TrustedAccounts, "bob");
        using (var bob = await _store.OpenViewAsync("bob", default))
        {
            Assert.Contains(library, await bob.SubstituteAsync([library], default));
            await bob.AddToStoreAsync(Declared(app, AppNar, library), new MemoryStream(AppNar), false, false, default);
        }

        using var alice = await _store.OpenViewAsync("alice", default);
        Assert.Empty(await alice.TakeSharedAsync([library], default));
        Assert.Empty(await alice.TakeSharedAsync([app], default));
        Assert.Null(await alice.OpenNarAsync(library, default));

        // QueryMissing does not promise what cannot be taken whole: Alice's derivation of the app will be built.
        var (drv, missing) = await QueryMissingOfAsync(alice, app);
        Assert.Equal([drv], missing.WillBuild);
        Assert.Empty(missing.WillSubstitute);

        // Once Carol shares with Alice and Alice trusts her too, both come (the library from Carol herself).
        await SetAsync("carol", AccountSharing.ShareWith, "bob alice");
        await SetAsync("alice", AccountSharing.TrustedAccounts, "bob carol");
        using var again = await _store.OpenViewAsync("alice", default);
        Assert.Equal(new Dictionary<StorePath, string> { [app] = "bob", [library] = "carol" }, await again.TakeSharedAsync([app], default));
    }

    [Fact]
    public async Task Globally_trusted_paths_stay_so_and_query_missing_counts_shared_outputs_as_substitutable()
    {
        await SetAsync("bob", AccountSharing.ShareWith, "alice");
        await SetAsync("alice", AccountSharing.TrustedAccounts, "bob");
        StorePath source;
        using (var bob = await _store.OpenViewAsync("bob", default))
        {
            source = (await bob.AddContentAddressedAsync("source.txt", ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
                new MemoryStream("hello"u8.ToArray()), new SortedSet<StorePath>(), false, default)).Path;
        }

        using var alice = await _store.OpenViewAsync("alice", default);
        Assert.Contains(source, await alice.SubstituteAsync([source], default));
        Assert.Equal(PathTrust.ContentAddressed, (await alice.GetRecordsAsync([source], default))[source].Trust);

        // A derivation of Alice's whose output Bob holds: QueryMissing says it will be substituted, not built.
        var (_, missing) = await QueryMissingOfAsync(alice, App);
        Assert.Empty(missing.WillBuild);
        Assert.Equal([App], missing.WillSubstitute);
        Assert.Equal(0, missing.DownloadSize);
        Assert.Equal(AppNar.Length, missing.NarSize);
    }
}
