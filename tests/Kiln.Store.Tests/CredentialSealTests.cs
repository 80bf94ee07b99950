using Kiln.Nix.Tests.Support;
using Kiln.Protocol;

namespace Kiln.Store.Tests;

/// <summary>Accounts' credentials are sealed in the database under a key kept outside it, and opened only with that key.</summary>
public sealed class CredentialSealTests : IAsyncLifetime
{
    private const string Netrc = "machine cache.example.org login alice password very-secret-password";
    private readonly TempDir _temp = new();
    private KilnStore _store = null!;

    public async ValueTask InitializeAsync() => _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"] }, default);

    public async ValueTask DisposeAsync()
    {
        await _store.DisposeAsync();
        _temp.Dispose();
    }

    [Fact]
    public async Task A_netrc_is_sealed_in_the_database_and_opened_for_its_readers()
    {
        var alice = await _store.Metadata.GetOrCreateAccountAsync("alice", default);
        await _store.Settings.SetUpstreamSettingsAsync(alice, "https://cache.example.org", null, Netrc, default);

        var raw = await _store.Metadata.GetUpstreamSettingsAsync(alice, default);
        Assert.StartsWith("kiln-sealed-v1:", raw.Netrc, StringComparison.Ordinal);
        Assert.DoesNotContain("very-secret", raw.Netrc, StringComparison.Ordinal);
        Assert.Equal("https://cache.example.org", raw.Substituters); // (only the credentials are sealed)
        Assert.Equal(Netrc, (await _store.Settings.GetUpstreamSettingsAsync(alice, default)).Netrc);
        var keyFile = Path.Combine(_temp["data"], "keys", "credentials.key");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(keyFile));

        // Removing them stores nothing sealed; what was stored before sealing is read as it was.
        await _store.Settings.SetUpstreamSettingsAsync(alice, null, null, "", default);
        Assert.Equal("", (await _store.Metadata.GetUpstreamSettingsAsync(alice, default)).Netrc);
        await _store.Metadata.SetUpstreamSettingsAsync(alice, null, null, Netrc, default);
        Assert.Equal(Netrc, (await _store.Settings.GetUpstreamSettingsAsync(alice, default)).Netrc);

        // The server seals such text when it starts.
        Assert.Equal(1, await _store.SealLegacyCredentialsAsync(default));
        Assert.StartsWith("kiln-sealed-v1:", (await _store.Metadata.GetUpstreamSettingsAsync(alice, default)).Netrc, StringComparison.Ordinal);
        Assert.Equal(Netrc, (await _store.Settings.GetUpstreamSettingsAsync(alice, default)).Netrc);
        Assert.Equal(0, await _store.SealLegacyCredentialsAsync(default));
    }

    [Fact]
    public async Task A_signing_key_is_sealed_in_the_database_and_legacy_keys_are_sealed_at_start()
    {
        // An account's signing key may be one it imported (its own cache's key, trusted by its other machines).
        var alice = await _store.Metadata.GetOrCreateAccountAsync("alice", default);
        var bob = await _store.Metadata.GetOrCreateAccountAsync("bob", default);
        var key = Kiln.Nix.Signing.SecretKey.Generate("alices-cache-1").ToString();
        await _store.Settings.SetSigningKeyAsync(alice, key, default);
        var raw = await _store.Metadata.GetSigningKeyAsync(alice, default);
        Assert.StartsWith("kiln-sealed-v1:", raw, StringComparison.Ordinal);
        Assert.DoesNotContain(key.Split(':')[1][..16], raw, StringComparison.Ordinal);
        Assert.Equal(key, await _store.Settings.GetSigningKeyAsync(alice, default));
        Assert.Null(await _store.Settings.GetSigningKeyAsync(bob, default));

        // Copied onto another account's row, it does not open.
        await _store.Metadata.SetSigningKeyAsync(bob, raw!, default);
        Assert.Equal(ErrorKind.Failed, (await Assert.ThrowsAsync<KilnException>(() => _store.Settings.GetSigningKeyAsync(bob, default))).Kind);

        // A key stored before sealing is read as it is, and sealed when the server starts.
        var legacy = Kiln.Nix.Signing.SecretKey.Generate("bob-1").ToString();
        await _store.Metadata.SetSigningKeyAsync(bob, legacy, default);
        Assert.Equal(legacy, await _store.Settings.GetSigningKeyAsync(bob, default));
        Assert.Equal(1, await _store.SealLegacyCredentialsAsync(default));
        Assert.StartsWith("kiln-sealed-v1:", await _store.Metadata.GetSigningKeyAsync(bob, default), StringComparison.Ordinal);
        Assert.Equal(legacy, await _store.Settings.GetSigningKeyAsync(bob, default));
    }

    [Fact]
    public async Task Another_key_or_damaged_text_opens_nothing_and_says_why()
    {
        var alice = await _store.Metadata.GetOrCreateAccountAsync("alice", default);
        await _store.Settings.SetUpstreamSettingsAsync(alice, "https://cache.example.org", null, Netrc, default);

        // Another front door on the same database with its own key (not the installation's): a clear error, and its
        // sessions still use the caches, without the credentials.
        var other = _temp["other"];
        Directory.CreateDirectory(other);
        File.WriteAllText(Path.Combine(other, "other.key"), CredentialSeal.NewKeyText());
        DataDirectoryBindings.Write(other, CredentialSeal.BindingFile, Path.Combine(other, "other.key"));
        var elsewhere = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = other }, _store.Metadata, default);
        var e = await Assert.ThrowsAsync<KilnException>(() => elsewhere.Settings.GetUpstreamSettingsAsync(alice, default));
        Assert.Contains("--credentials-key", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("very-secret", e.Message, StringComparison.Ordinal);
        using (var view = elsewhere.OpenView(KilnStore.ReaderFor(alice)))
        {
            var warnings = new List<string>();
            var plan = await view.UpstreamPlanAsync(warnings.Add, default);
            Assert.Null(Assert.Single(plan.Caches).Credentials);
            Assert.Contains(warnings, w => w.Contains("credentials key", StringComparison.Ordinal));
        }

        // Sealed for alice, it does not open as another account's (a row copied by someone who can write the database).
        var bob = await _store.Metadata.GetOrCreateAccountAsync("bob", default);
        await _store.Metadata.SetUpstreamSettingsAsync(bob, null, null, (await _store.Metadata.GetUpstreamSettingsAsync(alice, default)).Netrc, default);
        await Assert.ThrowsAsync<KilnException>(() => _store.Settings.GetUpstreamSettingsAsync(bob, default));

        // A sealed text changed by a byte does not open either.
        var raw = (await _store.Metadata.GetUpstreamSettingsAsync(alice, default)).Netrc;
        var bytes = Convert.FromBase64String(raw["kiln-sealed-v1:".Length..]);
        bytes[^1] ^= 1;
        await _store.Metadata.SetUpstreamSettingsAsync(alice, null, null, "kiln-sealed-v1:" + Convert.ToBase64String(bytes), default);
        await Assert.ThrowsAsync<KilnException>(() => _store.Settings.GetUpstreamSettingsAsync(alice, default));

        // A bound key file that went missing is named.
        File.Delete(Path.Combine(other, "other.key"));
        var missing = Assert.Throws<KilnException>(() => CredentialSeal.ForDataDirectory(other));
        Assert.Contains("is missing", missing.Message, StringComparison.Ordinal);
    }
}
