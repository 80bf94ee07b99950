using System.Text;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Accounts.Tests;

/// <summary>
/// The account rules, over real SQLite metadata and OpenSSH's own ssh-keygen for the proofs: what the operator may
/// do, what a logged-in key may do to its own account (and that another account is "not found"), the permissions each
/// change needs, that a key never grants or removes more than it has, and that a key added by a key is proven.
/// </summary>
public sealed class AccountServiceTests : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private IMetadataStore _metadata = null!;
    private AccountService _service = null!;

    public async ValueTask InitializeAsync()
    {
        _metadata = MetadataStores.Open("sqlite://" + _temp["kiln.db"]);
        await _metadata.MigrateAsync(default);
        _service = new AccountService(_metadata, _metadata, new SshKeygenProofs(), "test-kiln/0123456789abcdef");
    }

    public async ValueTask DisposeAsync()
    {
        await _metadata.DisposeAsync();
        _temp.Dispose();
    }

    // A fresh Ed25519 key pair from ssh-keygen: the private key file, and the public key.
    private (string File, SshPublicKey Public) NewKey(string name)
    {
        var file = _temp[$"{name}-{Guid.NewGuid():N}"];
        var made = Processes.Run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", file]);
        Assert.True(made.ExitCode == 0, made.Stderr);
        return (file, SshPublicKey.Parse(File.ReadAllText(file + ".pub")));
    }

    private static string Sign(string privateKey, string message)
    {
        var signed = Processes.Run("ssh-keygen", ["-Y", "sign", "-n", "kiln", "-f", privateKey], Encoding.UTF8.GetBytes(message));
        Assert.True(signed.ExitCode == 0, signed.Stderr);
        return signed.StdoutText;
    }

    private async Task<(AccountRecord Account, Actor Actor, string KeyFile)> LoginAsync(string account, KeyPermissions permissions)
    {
        var record = await _service.CreateAccountAsync(Actor.Operator, account, default);
        var (file, key) = NewKey(account);
        var added = (await _service.AddKeyAsync(Actor.Operator, record, key, permissions, null, default)).Added!;
        return (record, Actor.ForKey(added), file);
    }

    private static async Task<KilnException> Refused(ErrorKind kind, Func<Task> action)
    {
        var error = await Assert.ThrowsAsync<KilnException>(action);
        Assert.Equal(kind, error.Kind);
        return error;
    }

    [Fact]
    public async Task Only_the_operator_creates_accounts_and_a_key_sees_its_own_account_only()
    {
        var (alice, aliceActor, _) = await LoginAsync("alice", KeyPermissions.All);
        await _service.CreateAccountAsync(Actor.Operator, "bob", default);
        await Refused(ErrorKind.Conflict, () => _service.CreateAccountAsync(Actor.Operator, "bob", default));
        await Refused(ErrorKind.Invalid, () => _service.CreateAccountAsync(Actor.Operator, "Not A Name!", default));
        await Refused(ErrorKind.Forbidden, () => _service.CreateAccountAsync(aliceActor, "carol", default));

        Assert.Equal(["alice", "bob"], (await _service.ListAccountsAsync(Actor.Operator, default)).Select(a => a.Name));
        Assert.Equal(["alice"], (await _service.ListAccountsAsync(aliceActor, default)).Select(a => a.Name));

        // Another account is "not found" to a key, exactly like one that does not exist.
        var other = await Refused(ErrorKind.NotFound, () => _service.AccountAsync(aliceActor, "bob", default));
        var missing = await Refused(ErrorKind.NotFound, () => _service.AccountAsync(aliceActor, "nobody", default));
        Assert.Equal(other.Message.Replace("bob", "X", StringComparison.Ordinal), missing.Message.Replace("nobody", "X", StringComparison.Ordinal));
        var bob = await _service.AccountAsync(Actor.Operator, "bob", default);
        await Refused(ErrorKind.NotFound, () => _service.ListKeysAsync(aliceActor, bob, default));
        await Refused(ErrorKind.NotFound, () => _service.CreateTokenAsync(aliceActor, bob, KeyPermissions.StoreRead, null, "", default));
        Assert.Equal(alice, await _service.AccountAsync(aliceActor, "alice", default));
    }

    [Fact]
    public async Task Changing_an_account_or_listing_its_keys_needs_account_write()
    {
        var (alice, reader, _) = await LoginAsync("alice", KeyPermissions.StoreRead | KeyPermissions.BuildRead);
        var (_, key) = NewKey("new");
        await Refused(ErrorKind.Forbidden, () => _service.ListKeysAsync(reader, alice, default));
        await Refused(ErrorKind.Forbidden, () => _service.AddKeyAsync(reader, alice, key, KeyPermissions.StoreRead, null, default));
        await Refused(ErrorKind.Forbidden, () => _service.CreateTokenAsync(reader, alice, KeyPermissions.StoreRead, null, "", default));
        await Refused(ErrorKind.Forbidden, () => _service.CreateSigningKeyAsync(reader, alice, null, default));
        await Refused(ErrorKind.Forbidden, () => _service.ChangeSettingsAsync(reader, alice, new SettingsChange(PublicCache: true), default));
        await Refused(ErrorKind.Forbidden, () => _service.SettingsAsync(reader, alice, default)); // substituter addresses may carry credentials
    }

    [Fact]
    public async Task A_key_never_grants_or_removes_more_than_it_has()
    {
        var (alice, limited, _) = await LoginAsync("alice", KeyPermissions.StoreRead | KeyPermissions.AccountWrite);
        var (_, strong) = NewKey("strong");
        await _service.AddKeyAsync(Actor.Operator, alice, strong, KeyPermissions.All, null, default);

        var (newFile, newKey) = NewKey("new");
        var proof = Sign(newFile, _service.ProofMessage(alice, newKey));
        await Refused(ErrorKind.Forbidden, () => _service.AddKeyAsync(limited, alice, newKey, KeyPermissions.BuildWrite, proof, default));
        await Refused(ErrorKind.Forbidden, () => _service.CreateTokenAsync(limited, alice, KeyPermissions.StoreWrite, null, "", default));
        await Refused(ErrorKind.Forbidden, () => _service.RemoveKeyAsync(limited, alice, strong.Fingerprint, default));
        Assert.Equal(2, (await _service.ListKeysAsync(limited, alice, default)).Count);

        // Within its own permissions it may.
        Assert.NotNull((await _service.AddKeyAsync(limited, alice, newKey, KeyPermissions.StoreRead, proof, default)).Added);
        await _service.RemoveKeyAsync(limited, alice, newKey.Fingerprint, default);
        await _service.RemoveKeyAsync(Actor.ForKey((await _metadata.FindSshKeyAsync(strong.Type, strong.Blob, default))!), alice, strong.Fingerprint, default);
    }

    [Fact]
    public async Task A_key_added_by_a_key_needs_a_proof_by_that_key_for_that_account_on_this_Kiln()
    {
        var (alice, aliceActor, aliceFile) = await LoginAsync("alice", KeyPermissions.All);
        var (bob, bobActor, _) = await LoginAsync("bob", KeyPermissions.All);
        var (victimFile, victim) = NewKey("victim");

        // No proof: nothing is added; the message to sign comes back, whether or not the key is known anywhere.
        var asked = await _service.AddKeyAsync(aliceActor, alice, victim, KeyPermissions.StoreRead, null, default);
        Assert.Null(asked.Added);
        Assert.Equal(_service.ProofMessage(alice, victim), asked.ProofMessage);
        Assert.Contains(victim.Fingerprint, asked.ProofMessage, StringComparison.Ordinal);
        Assert.Contains("account alice", asked.ProofMessage, StringComparison.Ordinal);
        Assert.Contains("test-kiln/0123456789abcdef", asked.ProofMessage, StringComparison.Ordinal);

        // Signed by another key, signed for another account, another Kiln, another namespace, or garbage: refused.
        await Refused(ErrorKind.Forbidden, () => _service.AddKeyAsync(aliceActor, alice, victim, KeyPermissions.StoreRead, Sign(aliceFile, _service.ProofMessage(alice, victim)), default));
        await Refused(ErrorKind.Forbidden, () => _service.AddKeyAsync(aliceActor, alice, victim, KeyPermissions.StoreRead, Sign(victimFile, _service.ProofMessage(bob, victim)), default));
        var elsewhere = new AccountService(_metadata, _metadata, new SshKeygenProofs(), "another-kiln/ffff");
        await Refused(ErrorKind.Forbidden, () => _service.AddKeyAsync(aliceActor, alice, victim, KeyPermissions.StoreRead, Sign(victimFile, elsewhere.ProofMessage(alice, victim)), default));
        var gitSignature = Processes.Run("ssh-keygen", ["-Y", "sign", "-n", "git", "-f", victimFile], Encoding.UTF8.GetBytes(_service.ProofMessage(alice, victim))).StdoutText;
        await Refused(ErrorKind.Forbidden, () => _service.AddKeyAsync(aliceActor, alice, victim, KeyPermissions.StoreRead, gitSignature, default));
        await Refused(ErrorKind.Forbidden, () => _service.AddKeyAsync(aliceActor, alice, victim, KeyPermissions.StoreRead, "not a signature", default));
        Assert.Single(await _service.ListKeysAsync(aliceActor, alice, default));

        // The holder's proof adds it, armored as ssh-keygen wrote it or as one line of base64.
        var proof = Sign(victimFile, _service.ProofMessage(bob, victim));
        var oneLine = string.Concat(proof.Split('\n').Where(l => !l.StartsWith("-----", StringComparison.Ordinal)));
        Assert.NotNull((await _service.AddKeyAsync(bobActor, bob, victim, KeyPermissions.StoreRead, oneLine, default)).Added);

        // Only now, to the proven holder, is "registered already" said.
        await Refused(ErrorKind.Conflict, () => _service.AddKeyAsync(bobActor, bob, victim, KeyPermissions.StoreRead, proof, default));
        var again = await _service.AddKeyAsync(aliceActor, alice, victim, KeyPermissions.StoreRead, null, default);
        Assert.Null(again.Added); // to anyone else it looks like any other key
    }

    [Fact]
    public async Task A_proof_is_good_for_an_hour_or_two_not_for_ever()
    {
        var (alice, actor, _) = await LoginAsync("alice", KeyPermissions.All);
        var (file, key) = NewKey("laptop");
        var old = Sign(file, _service.ProofMessage(alice, key, DateTimeOffset.UtcNow.AddHours(-3)));
        await Refused(ErrorKind.Forbidden, () => _service.AddKeyAsync(actor, alice, key, KeyPermissions.StoreRead, old, default));
        var lastHour = Sign(file, _service.ProofMessage(alice, key, DateTimeOffset.UtcNow.AddHours(-1)));
        Assert.NotNull((await _service.AddKeyAsync(actor, alice, key, KeyPermissions.StoreRead, lastHour, default)).Added);
    }

    [Fact]
    public async Task A_key_acts_as_it_stands_now_not_as_when_its_session_began()
    {
        var (alice, stale, _) = await LoginAsync("alice", KeyPermissions.All);
        await _service.RemoveKeyAsync(Actor.Operator, alice, stale.Key!.Fingerprint, default);
        var (_, other) = NewKey("other");
        var refused = await Refused(ErrorKind.Forbidden, () => _service.AddKeyAsync(stale, alice, other, KeyPermissions.StoreRead, null, default));
        Assert.Contains("no longer registered", refused.Message, StringComparison.Ordinal);
        await Refused(ErrorKind.Forbidden, () => _service.ListKeysAsync(stale, alice, default));
    }

    [Fact]
    public async Task Hierarchy_settings_are_set_by_keys_that_manage_their_own_account_only()
    {
        var (alice, manager, _) = await LoginAsync("alice", KeyPermissions.All);
        var (_, builder, _) = await LoginAsync("alice2", KeyPermissions.StoreRead | KeyPermissions.BuildWrite);
        var (bob, bobs, _) = await LoginAsync("bob", KeyPermissions.All);
        var set = await _service.SetSettingAsync(manager, alice, "timeout", "10m", manager.Key!.Fingerprint, final: false, default);
        Assert.Equal(new Kiln.Store.Metadata.SettingRecord(Settings.KeyScope(manager.Key.Fingerprint), "timeout", "600", false), set);
        await Refused(ErrorKind.Forbidden, () => _service.SetSettingAsync(builder, AccountService.OwnAccount(builder), "timeout", "1", null, false, default));
        await Refused(ErrorKind.NotFound, () => _service.SetSettingAsync(bobs, alice, "timeout", "1", null, false, default)); // another account's
        await Refused(ErrorKind.NotFound, () => _service.SetSettingAsync(bobs, bob, "timeout", "1", manager.Key.Fingerprint, false, default)); // another account's key
        await Refused(ErrorKind.NotFound, () => _service.StoredSettingsAsync(bobs, alice, default));
        Assert.Single(await _service.StoredSettingsAsync(manager, alice, default));
        Assert.True(await _service.UnsetSettingAsync(manager, alice, "timeout", manager.Key.Fingerprint, default));

        // A final value is a cap the operator set: keys neither change nor remove it.
        await _service.SetSettingAsync(Actor.Operator, alice, "timeout", "1h", null, final: true, default);
        Assert.Contains("final", (await Refused(ErrorKind.Forbidden, () => _service.UnsetSettingAsync(manager, alice, "timeout", null, default))).Message, StringComparison.Ordinal);
        await Refused(ErrorKind.Forbidden, () => _service.SetSettingAsync(manager, alice, "timeout", "2h", null, false, default));
        Assert.True(await _service.UnsetSettingAsync(Actor.Operator, alice, "timeout", null, default));

        // Quotas are the operator's, for the whole account: a manager key neither sets nor lifts one.
        Assert.Contains("quota", (await Refused(ErrorKind.Forbidden, () => _service.SetSettingAsync(manager, alice, "max-storage", "1TiB", null, false, default))).Message, StringComparison.Ordinal);
        await _service.SetSettingAsync(Actor.Operator, alice, "max-storage", "1GiB", null, final: false, default);
        await Refused(ErrorKind.Forbidden, () => _service.UnsetSettingAsync(manager, alice, "max-storage", null, default));
        await Refused(ErrorKind.Invalid, () => _service.SetSettingAsync(Actor.Operator, alice, "max-cpu-hours-per-month", "1", manager.Key.Fingerprint, false, default));
        Assert.True(await _service.UnsetSettingAsync(Actor.Operator, alice, "max-storage", null, default));

        // Retention is the account's own choice, for the whole account (not a key's).
        await _service.SetSettingAsync(manager, alice, "retention", "30d", null, final: false, default);
        await Refused(ErrorKind.Invalid, () => _service.SetSettingAsync(manager, alice, "retention", "1d", manager.Key.Fingerprint, false, default));
        Assert.True(await _service.UnsetSettingAsync(manager, alice, "retention", null, default));

        // A removed key's settings go with it.
        await _service.SetSettingAsync(manager, alice, "max-silent-time", "60", manager.Key.Fingerprint, final: false, default);
        await _service.RemoveKeyAsync(Actor.Operator, alice, manager.Key.Fingerprint, default);
        Assert.Empty(await _service.StoredSettingsAsync(Actor.Operator, alice, default));
    }

    [Fact]
    public async Task Upstream_caches_are_the_operators_settings_kept_with_the_account_and_shown_to_those_who_manage_it()
    {
        var (alice, manager, _) = await LoginAsync("alice", KeyPermissions.All);
        var (_, readerPublic) = NewKey("reader");
        var reader = Actor.ForKey((await _service.AddKeyAsync(Actor.Operator, alice, readerPublic, KeyPermissions.StoreRead, null, default)).Added!);
        var key = Kiln.Nix.Signing.SecretKey.Generate("up-1").PublicKey.ToString();

        await _service.SetSettingAsync(Actor.Operator, alice, "substituters", " https://a.example.org  https://b.example.org ", null, final: false, default);
        await _service.SetSettingAsync(Actor.Operator, alice, "trusted-public-keys", key, null, final: false, default);
        Assert.Equal(new UpstreamSettings("https://a.example.org https://b.example.org", key, ""), await _metadata.GetUpstreamSettingsAsync(alice.Id, default));
        await Refused(ErrorKind.Forbidden, () => _service.SetSettingAsync(manager, alice, "substituters", "https://evil.example.org", null, final: false, default));
        await Refused(ErrorKind.Invalid, () => _service.SetSettingAsync(Actor.Operator, alice, "substituters", "ftp://x", null, final: false, default));
        await Refused(ErrorKind.Invalid, () => _service.SetSettingAsync(Actor.Operator, alice, "trusted-public-keys", "not-a-key", null, final: false, default));

        var shown = Settings.Resolve(new Dictionary<string, long>(), await _service.StoredSettingsAsync(manager, alice, default), null, null);
        Assert.Equal("https://a.example.org https://b.example.org", Settings.TextOf(shown, Settings.Substituters));
        var hidden = Settings.Resolve(new Dictionary<string, long>(), await _service.StoredSettingsAsync(reader, alice, default), null, null);
        Assert.Equal(("", "the server's"), (Settings.TextOf(hidden, Settings.Substituters), hidden.Single(e => e.Definition == Settings.Substituters).Shown));

        Assert.True(await _service.UnsetSettingAsync(Actor.Operator, alice, "substituters", null, default));
        Assert.False(await _service.UnsetSettingAsync(Actor.Operator, alice, "substituters", null, default));
        Assert.Equal(new UpstreamSettings("", key, ""), await _metadata.GetUpstreamSettingsAsync(alice.Id, default));
    }

    [Fact]
    public async Task A_signing_key_for_builds_is_set_from_its_secret_and_shown_by_its_public_half_only()
    {
        var (alice, manager, _) = await LoginAsync("alice", KeyPermissions.All);
        var (_, readerPublic) = NewKey("reader");
        var reader = Actor.ForKey((await _service.AddKeyAsync(Actor.Operator, alice, readerPublic, KeyPermissions.StoreRead, null, default)).Added!);
        var secret = Kiln.Nix.Signing.SecretKey.Generate("alices-cache-1");

        var set = await _service.SetSettingAsync(manager, alice, "signing-key-for-builds", $" {secret} \n", null, final: false, default);
        Assert.Equal(secret.PublicKey.ToString(), set.Value); // never the secret
        Assert.Equal(secret.ToString(), await _metadata.GetSigningKeyAsync(alice.Id, default)); // the key that signs her builds and pushes
        Assert.Equal(secret.PublicKey.ToString(), (await _service.SigningKeyAsync(reader, alice, default)).ToString());
        foreach (var actor in new[] { manager, reader })
        {
            var shown = Settings.Resolve(new Dictionary<string, long>(), await _service.StoredSettingsAsync(actor, alice, default), null, null);
            Assert.Equal(secret.PublicKey.ToString(), Settings.TextOf(shown, Settings.SigningKeyForBuilds));
            Assert.DoesNotContain(await _service.StoredSettingsAsync(actor, alice, default), r => r.Value.Contains(secret.ToString().Split(':')[1][..20], StringComparison.Ordinal));
        }

        // A public key, garbage, a key's level, a reader, another account: refused, and the key stays.
        await Refused(ErrorKind.Invalid, () => _service.SetSettingAsync(manager, alice, "signing-key-for-builds", secret.PublicKey.ToString(), null, false, default));
        await Refused(ErrorKind.Invalid, () => _service.SetSettingAsync(manager, alice, "signing-key-for-builds", "x:AAAA", null, false, default));
        await Refused(ErrorKind.Invalid, () => _service.SetSettingAsync(manager, alice, "signing-key-for-builds", secret.ToString(), manager.Key!.Fingerprint, false, default));
        await Refused(ErrorKind.Forbidden, () => _service.SetSettingAsync(reader, alice, "signing-key-for-builds", SecretKey().ToString(), null, false, default));
        var (bob, bobs, _) = await LoginAsync("bob", KeyPermissions.All);
        await Refused(ErrorKind.NotFound, () => _service.SetSettingAsync(bobs, alice, "signing-key-for-builds", SecretKey().ToString(), null, false, default));
        await Refused(ErrorKind.Invalid, () => _service.UnsetSettingAsync(manager, alice, "signing-key-for-builds", null, default));
        Assert.Equal(secret.ToString(), await _metadata.GetSigningKeyAsync(alice.Id, default));
        Assert.Null(await _metadata.GetSigningKeyAsync(bob.Id, default));

        static Kiln.Nix.Signing.SecretKey SecretKey() => Kiln.Nix.Signing.SecretKey.Generate("mallory-1");
    }

    [Fact]
    public async Task An_accounts_netrc_is_set_by_those_who_manage_it_and_shown_by_its_machines_only()
    {
        var (alice, manager, _) = await LoginAsync("alice", KeyPermissions.All);
        var (_, readerPublic) = NewKey("reader");
        var reader = Actor.ForKey((await _service.AddKeyAsync(Actor.Operator, alice, readerPublic, KeyPermissions.StoreRead, null, default)).Added!);
        const string Netrc = "machine b.example.org\n  login alice\n  password hunter2-b\nmachine a.example.org login alice password hunter2-a\n";

        var set = await _service.SetSettingAsync(manager, alice, "netrc", Netrc, null, final: false, default);
        Assert.Equal("machine a.example.org machine b.example.org", set.Value);
        Assert.Equal("machine b.example.org login alice password hunter2-b machine a.example.org login alice password hunter2-a",
            (await _metadata.GetUpstreamSettingsAsync(alice.Id, default)).Netrc);
        var shown = Settings.Resolve(new Dictionary<string, long>(), await _service.StoredSettingsAsync(manager, alice, default), null, null);
        Assert.Equal("machine a.example.org machine b.example.org", Settings.TextOf(shown, Settings.Netrc));
        Assert.DoesNotContain(await _service.StoredSettingsAsync(manager, alice, default), r => r.Value.Contains("hunter2", StringComparison.Ordinal));
        Assert.DoesNotContain(await _service.StoredSettingsAsync(reader, alice, default), r => r.Name == "netrc");

        await Refused(ErrorKind.Forbidden, () => _service.SetSettingAsync(reader, alice, "netrc", Netrc, null, false, default));
        await Refused(ErrorKind.Invalid, () => _service.SetSettingAsync(manager, alice, "netrc", Netrc, manager.Key!.Fingerprint, false, default));
        await Refused(ErrorKind.Invalid, () => _service.SetSettingAsync(manager, alice, "netrc", "login alice password nothing-for-a-machine", null, false, default));
        Assert.True(await _service.UnsetSettingAsync(manager, alice, "netrc", null, default));
        Assert.Equal("", (await _metadata.GetUpstreamSettingsAsync(alice.Id, default)).Netrc);
        Assert.False(await _service.UnsetSettingAsync(manager, alice, "netrc", null, default));
    }

    [Fact]
    public async Task Tokens_signing_keys_and_settings_follow_the_same_rules()
    {
        var (alice, actor, _) = await LoginAsync("alice", KeyPermissions.StoreRead | KeyPermissions.StoreWrite | KeyPermissions.AccountWrite);
        await Refused(ErrorKind.Invalid, () => _service.CreateTokenAsync(actor, alice, KeyPermissions.None, null, "", default));
        await Refused(ErrorKind.Forbidden, () => _service.CreateTokenAsync(actor, alice, KeyPermissions.BuildRead, null, "", default)); // more than the key has
        var (secret, token) = await _service.CreateTokenAsync(actor, alice, KeyPermissions.StoreRead, DateTimeOffset.UtcNow.AddDays(1), "ci", default);
        Assert.True(AccessToken.LooksValid(secret));
        Assert.Equal(token.Id, (await _metadata.FindTokenAsync(AccessToken.Hash(secret), default))!.Id); // kept as its hash
        Assert.Single(await _service.ListTokensAsync(actor, alice, default));
        await _service.RevokeTokenAsync(actor, alice, token.Id, default);
        await Refused(ErrorKind.NotFound, () => _service.RevokeTokenAsync(actor, alice, token.Id, default));

        await Refused(ErrorKind.NotFound, () => _service.SigningKeyAsync(actor, alice, default));
        var key = await _service.CreateSigningKeyAsync(actor, alice, "alice-1", default);
        Assert.Equal(key.ToString(), (await _service.SigningKeyAsync(actor, alice, default)).ToString());
        await Refused(ErrorKind.Invalid, () => _service.CreateSigningKeyAsync(actor, alice, "bad:name", default));

        // The cache and substituter settings are the operator's: a key with account:write does not reach them.
        await Refused(ErrorKind.Forbidden, () => _service.ChangeSettingsAsync(actor, alice, new SettingsChange(PublicCache: true), default));
        await Refused(ErrorKind.Invalid, () => _service.ChangeSettingsAsync(Actor.Operator, alice, new SettingsChange(TrustedPublicKeys: "not-a-key"), default));
        var settings = await _service.ChangeSettingsAsync(Actor.Operator, alice, new SettingsChange(true, "https://cache.example", key.ToString(), "machine x login y password z"), default);
        Assert.Equal(new AccountSettings("alice", true, "https://cache.example", key.ToString(), true), settings);
    }
}
