using Kiln.Nix.Signing;
using Kiln.Protocol;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Accounts;

/// <summary>What an account's settings are now.</summary>
public sealed record AccountSettings(string Account, bool PublicCache, string Substituters, string TrustedPublicKeys, bool HasCredentials);

/// <summary>A change to an account's settings; a null field is left as it is.</summary>
public sealed record SettingsChange(bool? PublicCache = null, string? Substituters = null, string? TrustedPublicKeys = null, string? Netrc = null);

/// <summary>How adding a key went: added, or the proof the caller must give first (<see cref="ProofMessage"/> to sign).</summary>
public sealed record KeyAddition(SshKeyRecord? Added, string? ProofMessage);

/// <summary>
/// The rules for accounts and what they own — SSH keys, HTTP tokens, signing keys, settings — in one place, shared
/// by the <c>kiln</c> CLI (the operator), the SSH shell and (later) the API (a logged-in key):
/// <list type="bullet">
/// <item>a key acts on its own account only; another account is "not found", never "forbidden";</item>
/// <item>changing anything needs <c>account:write</c>, and so does listing keys (which keys log in to an account is the
/// account manager's business);</item>
/// <item>a key never grants (to a key or a token) a permission it lacks, nor removes a key that has one it lacks;</item>
/// <item>a key added by a key must be proven: signed with its private half (<c>ssh-keygen -Y sign -n kiln</c>) over a
/// message naming the key, the account and this Kiln, so the first to register someone's public key cannot take over
/// their logins; only after the proof does Kiln say whether the key is registered elsewhere. The operator is trusted.</item>
/// </list>
/// Failures are <see cref="KilnException"/>s with their kind.
/// </summary>
public sealed class AccountService(IAccountMetadata accounts, ISettingsMetadata settings, IKeyProofs proofs, string instance)
{
    /// <summary>The name of this Kiln in proof messages (so a proof for one Kiln is no proof for another).</summary>
    public string Instance => instance;

    /// <summary>A Kiln's name for proofs, from its build key: the key's name and a digest of the key.</summary>
    public static string InstanceName(PublicKey buildKey)
    {
        ArgumentNullException.ThrowIfNull(buildKey);
        var text = buildKey.ToString();
        var digest = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text)))[..16];
        return $"{text[..text.IndexOf(':', StringComparison.Ordinal)]}/{digest}";
    }

    public async Task<AccountRecord> CreateAccountAsync(Actor actor, string name, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        ArgumentNullException.ThrowIfNull(actor);
        if (!actor.IsOperator)
        {
            throw new KilnException(ErrorKind.Forbidden, "only the operator creates accounts");
        }

        var wanted = Validate(() => AccountName.Validate(name));
        return await accounts.TryCreateAccountAsync(wanted, cancellationToken).ConfigureAwait(false)
            ?? throw new KilnException(ErrorKind.Conflict, $"the account '{wanted}' already exists");
    }

    public async Task<IReadOnlyList<AccountRecord>> ListAccountsAsync(Actor actor, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        ArgumentNullException.ThrowIfNull(actor);
        var all = (await accounts.ListAccountsAsync(cancellationToken).ConfigureAwait(false)).Where(a => !AccountName.IsDeleted(a.Name)).ToList();
        return actor.IsOperator ? all : all.Where(a => a.Id == actor.AccountId).ToList();
    }

    /// <summary>The account by name, as <paramref name="actor"/> may see it (a key sees its own only).</summary>
    public async Task<AccountRecord> AccountAsync(Actor actor, string name, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        ArgumentNullException.ThrowIfNull(actor);
        var account = await accounts.FindAccountAsync(Validate(() => AccountName.Validate(name)), cancellationToken).ConfigureAwait(false);
        return account is not null && (actor.IsOperator || account.Id == actor.AccountId)
            ? account
            : throw new KilnException(ErrorKind.NotFound, $"there is no account '{name}' (see 'kiln account list')");
    }

    /// <summary>A key's or token's own account.</summary>
    public static AccountRecord OwnAccount(Actor actor)
    {
        ArgumentNullException.ThrowIfNull(actor);
        return actor is { AccountId: { } id, AccountName: { } name } ? new AccountRecord(id, name) : throw new KilnException(ErrorKind.Invalid, "the operator names an account");
    }

    // ---- SSH keys ----

    public async Task<IReadOnlyList<SshKeyRecord>> ListKeysAsync(Actor actor, AccountRecord account, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        Need(actor, account, KeyPermissions.AccountWrite);
        return await accounts.ListSshKeysAsync(account.Id, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>How long a proof stays good: it names the hour it was asked for, and the next hour still takes it.</summary>
    private static long Window(DateTimeOffset at) => at.ToUnixTimeSeconds() / 3600;

    /// <summary>
    /// What a key's holder signs to prove it, for adding that key to that account on this Kiln, now. It names the
    /// hour, so a proof seen later (in a shell history, a CI log) cannot add the key again once it was removed.
    /// </summary>
    public string ProofMessage(AccountRecord account, SshPublicKey key, DateTimeOffset? at = null)
    {
        ArgumentNullException.ThrowIfNull(account);
        ArgumentNullException.ThrowIfNull(key);
        return $"kiln: add key {key.Fingerprint} to account {account.Name} at {instance} in hour {Window(at ?? DateTimeOffset.UtcNow)}\n";
    }

    // A proof of this hour's message or the last hour's.
    private async Task<bool> ProvenAsync(AccountRecord account, SshPublicKey key, string proof, CancellationToken cancellationToken)
    {
        var now = DateTimeOffset.UtcNow;
        return await proofs.VerifyAsync(key, ProofMessage(account, key, now), proof, cancellationToken).ConfigureAwait(false)
            || await proofs.VerifyAsync(key, ProofMessage(account, key, now.AddHours(-1)), proof, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Adds a login key with <paramref name="permissions"/>. A key acting must give <paramref name="proof"/> (a signature
    /// of <see cref="ProofMessage"/>); without one, nothing is added and the message to sign comes back.
    /// </summary>
    public async Task<KeyAddition> AddKeyAsync(Actor actor, AccountRecord account, SshPublicKey key, KeyPermissions permissions, string? proof,
        CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        ArgumentNullException.ThrowIfNull(key);
        Need(actor, account, KeyPermissions.AccountWrite);
        CannotGrantMore(actor, permissions, "grant");
        OnlyTheOperatorGrantsServerRead(actor, permissions);
        Lasting(actor, "add a login key");
        if (!actor.IsOperator)
        {
            if (proof is null)
            {
                return new KeyAddition(null, ProofMessage(account, key));
            }

            if (!await ProvenAsync(account, key, proof, cancellationToken).ConfigureAwait(false))
            {
                throw new KilnException(ErrorKind.Forbidden, $"the proof is not a signature by {key.Fingerprint} of the message for this account and this Kiln (ssh-keygen -Y sign -n {SshKeygenProofs.Namespace})");
            }
        }

        try
        {
            return new KeyAddition(await accounts.AddSshKeyAsync(account.Id, key, permissions, cancellationToken).ConfigureAwait(false), null);
        }
        catch (DuplicateKeyException e)
        {
            // Told only to the operator or to whoever just proved they hold the key.
            throw new KilnException(ErrorKind.Conflict, e.Message, e);
        }
    }

    public async Task<SshKeyRecord> RemoveKeyAsync(Actor actor, AccountRecord account, string fingerprint, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        Need(actor, account, KeyPermissions.AccountWrite);
        var keys = await accounts.ListSshKeysAsync(account.Id, cancellationToken).ConfigureAwait(false);
        var target = keys.FirstOrDefault(k => k.Fingerprint == fingerprint)
            ?? throw new KilnException(ErrorKind.NotFound, $"the account has no key {fingerprint}");
        CannotGrantMore(actor, target.Permissions, "remove a key with");
        if (!await accounts.RemoveSshKeyAsync(account.Id, fingerprint, cancellationToken).ConfigureAwait(false))
        {
            throw new KilnException(ErrorKind.NotFound, $"the account has no key {fingerprint}");
        }

        return target;
    }

    // ---- HTTP tokens ----

    /// <summary>The longest description a token may have.</summary>
    public const int MaxDescription = 200;

    /// <summary>Creates a token; its secret is returned once, only its hash is kept.</summary>
    public async Task<(string Secret, TokenRecord Token)> CreateTokenAsync(Actor actor, AccountRecord account, KeyPermissions permissions, DateTimeOffset? expires,
        string description, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        ArgumentNullException.ThrowIfNull(description);
        Need(actor, account, KeyPermissions.AccountWrite);
        if (permissions == KeyPermissions.None)
        {
            throw new KilnException(ErrorKind.Invalid, "a token needs at least one permission");
        }

        if (description.Length > MaxDescription || description.Any(char.IsControl))
        {
            // It is printed in listings, on the operator's terminal too: one line of text, nothing a terminal obeys.
            throw new KilnException(ErrorKind.Invalid, $"a token's description is one line of at most {MaxDescription} printable characters");
        }

        CannotGrantMore(actor, permissions, "grant");
        OnlyTheOperatorGrantsServerRead(actor, permissions);
        if (actor.Token?.Expires is { } parentExpires && (expires is null || expires.Value.ToUnixTimeSeconds() > parentExpires))
        {
            // A token cannot outlive the token that made it: a leaked short-lived token must not mint a lasting one.
            expires = DateTimeOffset.FromUnixTimeSeconds(parentExpires);
        }

        var secret = AccessToken.Generate();
        var token = await accounts.AddTokenAsync(account.Id, AccessToken.Hash(secret), description, permissions, expires?.ToUnixTimeSeconds(), cancellationToken)
            .ConfigureAwait(false);
        return (secret, token);
    }

    public async Task<IReadOnlyList<TokenRecord>> ListTokensAsync(Actor actor, AccountRecord account, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        Need(actor, account, KeyPermissions.AccountWrite);
        return await accounts.ListTokensAsync(account.Id, cancellationToken).ConfigureAwait(false);
    }

    public async Task RevokeTokenAsync(Actor actor, AccountRecord account, long id, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        Need(actor, account, KeyPermissions.AccountWrite);
        if (actor.Token?.Id != id && (await accounts.ListTokensAsync(account.Id, cancellationToken).ConfigureAwait(false)).FirstOrDefault(t => t.Id == id) is { } target)
        {
            CannotGrantMore(actor, target.Permissions, "revoke a token with"); // a narrow token cannot take the account's stronger ones away
        }

        if (!await accounts.RevokeTokenAsync(account.Id, id, cancellationToken).ConfigureAwait(false))
        {
            throw new KilnException(ErrorKind.NotFound, $"the account '{account.Name}' has no token {id} that is not revoked already");
        }
    }

    // ---- signing keys ----

    /// <summary>Gives the account a new signing key (replacing any it had); returns its public half.</summary>
    public async Task<PublicKey> CreateSigningKeyAsync(Actor actor, AccountRecord account, string? name, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        Need(actor, account, KeyPermissions.AccountWrite);
        Lasting(actor, "replace the account's signing key");
        var keyName = name ?? $"{Environment.MachineName}-{account.Name}-1";
        if (keyName.Length is 0 or > 100 || keyName.Any(c => c is ':' or ' ' || char.IsControl(c)))
        {
            throw new KilnException(ErrorKind.Invalid, "a signing key's name is 1 to 100 printable characters, without ':' or spaces");
        }

        var key = SecretKey.Generate(keyName);
        await settings.SetSigningKeyAsync(account.Id, key.ToString(), cancellationToken).ConfigureAwait(false);
        return key.PublicKey;
    }

    public async Task<PublicKey> SigningKeyAsync(Actor actor, AccountRecord account, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        Need(actor, account, KeyPermissions.None);
        var secret = await settings.GetSigningKeyAsync(account.Id, cancellationToken).ConfigureAwait(false)
            ?? throw new KilnException(ErrorKind.NotFound, $"the account '{account.Name}' has no signing key (see 'kiln signing-key create')");
        return SecretKey.Parse(secret).PublicKey;
    }

    // ---- settings ----

    public async Task<AccountSettings> SettingsAsync(Actor actor, AccountRecord account, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        // Substituter addresses can carry credentials of their own: only those who manage the account read them.
        Need(actor, account, KeyPermissions.AccountWrite);
        var upstream = await settings.GetUpstreamSettingsAsync(account.Id, cancellationToken).ConfigureAwait(false);
        var isPublic = (await accounts.GetPublicCacheAccountsAsync(cancellationToken).ConfigureAwait(false)).Contains(account.Id);
        return new AccountSettings(account.Name, isPublic, upstream.Substituters, upstream.TrustedPublicKeys, upstream.Netrc.Length > 0);
    }

    public async Task<AccountSettings> ChangeSettingsAsync(Actor actor, AccountRecord account, SettingsChange change, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        ArgumentNullException.ThrowIfNull(change);
        Need(actor, account, KeyPermissions.AccountWrite);
        if (!actor.IsOperator)
        {
            // These reach past the account's permissions: a public cache lets anyone read its store, substituters and
            // trusted keys decide what content enters it, and the server dials the substituters (with the netrc's
            // credentials). The operator sets them until the settings hierarchy says which levels may.
            throw new KilnException(ErrorKind.Forbidden, "the operator sets an account's cache and substituter settings ('kiln account settings')");
        }

        foreach (var key in (change.TrustedPublicKeys ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            Validate(() => PublicKey.Parse(key)); // a typo is an error now, not a warning at every build
        }

        if (change.PublicCache is { } isPublic)
        {
            await accounts.SetPublicCacheAsync(account.Id, isPublic, cancellationToken).ConfigureAwait(false);
        }

        if (change.Substituters is not null || change.TrustedPublicKeys is not null || change.Netrc is not null)
        {
            await settings.SetUpstreamSettingsAsync(account.Id, change.Substituters, change.TrustedPublicKeys, change.Netrc, cancellationToken).ConfigureAwait(false);
        }

        return await SettingsAsync(actor, account, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The account's settings of the hierarchy (account level, and every key's), as stored.</summary>
    public async Task<IReadOnlyList<SettingRecord>> StoredSettingsAsync(Actor actor, AccountRecord account, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        Need(actor, account, KeyPermissions.None);
        var stored = await settings.GetSettingsAsync(account.Id, cancellationToken).ConfigureAwait(false);

        // The signing key is the account's record too; its public half is shown (never the secret).
        if (await settings.GetSigningKeyAsync(account.Id, cancellationToken).ConfigureAwait(false) is { } secret)
        {
            stored = [.. stored, new SettingRecord("", Settings.SigningKeyForBuilds.Name, SecretKey.Parse(secret).PublicKey.ToString(), Final: false)];
        }

        if (!actor.IsOperator && !actor.Permissions.HasFlag(KeyPermissions.AccountWrite))
        {
            return stored; // (substituter addresses can carry credentials: only those who manage the account read them)
        }

        // The upstream caches live with the account's record; they are shown as its settings (the netrc by its machines).
        var upstream = await settings.GetUpstreamSettingsAsync(account.Id, cancellationToken).ConfigureAwait(false);

        return [.. stored, .. new[] { (Settings.Substituters, upstream.Substituters), (Settings.TrustedPublicKeys, upstream.TrustedPublicKeys), (Settings.Netrc, Settings.NetrcShown(upstream.Netrc)) }
            .Where(u => u.Item2.Length > 0).Select(u => new SettingRecord("", u.Item1.Name, u.Item2, Final: false))];
    }

    /// <summary>
    /// Sets one setting of the hierarchy for the account, or (<paramref name="keyFingerprint"/>) for one of its keys;
    /// the value is checked and kept in its canonical form. Keys that manage the account (account:write) may, as may
    /// the operator.
    /// </summary>
    public async Task<SettingRecord> SetSettingAsync(Actor actor, AccountRecord account, string name, string value, string? keyFingerprint, bool final,
        CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        Need(actor, account, KeyPermissions.AccountWrite);
        var definition = Settings.Find(name);
        RefuseQuota(actor, definition, keyFingerprint);
        if (definition.SigningKey)
        {
            Lasting(actor, "replace the account's signing key");
            var key = Validate(() => SecretKey.Parse((value ?? "").Trim()));
            await settings.SetSigningKeyAsync(account.Id, key.ToString(), cancellationToken).ConfigureAwait(false);
            return new SettingRecord("", definition.Name, key.PublicKey.ToString(), Final: false); // (the secret is never echoed)
        }

        var record = new SettingRecord(await ScopeAsync(account, keyFingerprint, cancellationToken).ConfigureAwait(false), definition.Name,
            definition.Normalize(value), final);
        if (definition.Upstream)
        {
            await SetUpstreamAsync(account, definition, record.Value, cancellationToken).ConfigureAwait(false);
            return record with { Final = false, Value = definition == Settings.Netrc ? Settings.NetrcShown(record.Value) : record.Value };
        }

        await RefuseFinalAsync(actor, account, record.Scope, record.Name, cancellationToken).ConfigureAwait(false);
        await settings.SetSettingAsync(account.Id, record, cancellationToken).ConfigureAwait(false);
        return record;
    }

    // A quota protects everyone else: the operator sets it, for the account as a whole (a key's would never be read).
    private static void RefuseQuota(Actor actor, SettingDefinition definition, string? keyFingerprint)
    {
        if (definition.OperatorOnly && !actor.IsOperator)
        {
            throw new KilnException(ErrorKind.Forbidden, $"{definition.Name} is {(definition.Quota ? "a quota" : "the operator's")}: only the operator changes it ('kiln settings')");
        }

        if (definition.AccountWide && keyFingerprint is not null)
        {
            throw new KilnException(ErrorKind.Invalid, $"{definition.Name} is {(definition.Quota ? "a quota" : "a setting")} of the whole account: it is not set for a key");
        }
    }

    // A final setting is a cap: the operator changes it, not the keys it holds (they share the account's level).
    private async Task RefuseFinalAsync(Actor actor, AccountRecord account, string scope, string name, CancellationToken cancellationToken)
    {
        if (!actor.IsOperator && (await settings.GetSettingsAsync(account.Id, cancellationToken).ConfigureAwait(false)).Any(s => s.Scope == scope && s.Name == name && s.Final))
        {
            throw new KilnException(ErrorKind.Forbidden, $"{name} is final there: only the operator changes it ('kiln settings')");
        }
    }

    /// <summary>Removes one setting of the account's (or of one of its keys); false if it was not set.</summary>
    public async Task<bool> UnsetSettingAsync(Actor actor, AccountRecord account, string name, string? keyFingerprint, CancellationToken cancellationToken)
    {
        actor = await CurrentAsync(actor, cancellationToken).ConfigureAwait(false);
        Need(actor, account, KeyPermissions.AccountWrite);
        var scope = await ScopeAsync(account, keyFingerprint, cancellationToken).ConfigureAwait(false);
        var definition = Settings.Find(name);
        RefuseQuota(actor, definition, keyFingerprint);
        if (definition.SigningKey)
        {
            // (Outputs already signed keep their signatures; a key is replaced, so the account always has one once set.)
            throw new KilnException(ErrorKind.Invalid, $"{definition.Name} is replaced, not removed: set another key ('settings set {definition.Name} - < key.sec', or 'kiln signing-key create')");
        }

        if (definition.Upstream)
        {
            var upstream = await settings.GetUpstreamSettingsAsync(account.Id, cancellationToken).ConfigureAwait(false);
            await SetUpstreamAsync(account, definition, "", cancellationToken).ConfigureAwait(false);
            return (definition == Settings.Substituters ? upstream.Substituters : definition == Settings.Netrc ? upstream.Netrc : upstream.TrustedPublicKeys).Length > 0;
        }

        await RefuseFinalAsync(actor, account, scope, definition.Name, cancellationToken).ConfigureAwait(false);
        return await settings.UnsetSettingAsync(account.Id, scope, definition.Name, cancellationToken).ConfigureAwait(false);
    }

    private Task SetUpstreamAsync(AccountRecord account, SettingDefinition definition, string value, CancellationToken cancellationToken) =>
        settings.SetUpstreamSettingsAsync(account.Id, definition == Settings.Substituters ? value : null, definition == Settings.TrustedPublicKeys ? value : null,
            definition == Settings.Netrc ? value : null, cancellationToken);

    // The account's level, or one of its keys' (another account's key is not found, as if it did not exist).
    private async Task<string> ScopeAsync(AccountRecord account, string? keyFingerprint, CancellationToken cancellationToken)
    {
        if (keyFingerprint is null)
        {
            return "";
        }

        var keys = await accounts.ListSshKeysAsync(account.Id, cancellationToken).ConfigureAwait(false);
        return keys.Any(k => k.Fingerprint == keyFingerprint)
            ? Settings.KeyScope(keyFingerprint)
            : throw new KilnException(ErrorKind.NotFound, $"the account has no key {keyFingerprint} (see 'keys list')");
    }

    // A key acts as it stands now, not as it stood when its session began: a removed, disabled or narrowed key cannot
    // keep using a shell it opened before.
    private async Task<Actor> CurrentAsync(Actor actor, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(actor);
        if (actor.Key is not { } key)
        {
            return actor;
        }

        var now = await accounts.GetSshKeyAsync(key.Id, cancellationToken).ConfigureAwait(false);
        return now is { Enabled: true } && now.AccountId == key.AccountId
            ? Actor.ForKey(now)
            : throw new KilnException(ErrorKind.Forbidden, "this key is no longer registered with Kiln");
    }

    // ---- the rules ----

    private static void Need(Actor actor, AccountRecord account, KeyPermissions permission)
    {
        ArgumentNullException.ThrowIfNull(actor);
        ArgumentNullException.ThrowIfNull(account);
        if (!actor.IsOperator && actor.AccountId != account.Id)
        {
            throw new KilnException(ErrorKind.NotFound, $"there is no account '{account.Name}'");
        }

        if (!actor.IsOperator && (actor.Permissions & permission) != permission)
        {
            throw new KilnException(ErrorKind.Forbidden, $"this {Credential(actor)} lacks the {KeyPermissionNames.Format(permission)} permission");
        }
    }

    private static void CannotGrantMore(Actor actor, KeyPermissions permissions, string what)
    {

        if (!actor.IsOperator && (permissions & ~actor.Permissions) != 0)
        {
            throw new KilnException(ErrorKind.Forbidden, $"this {Credential(actor)} cannot {what} {KeyPermissionNames.Format(permissions & ~actor.Permissions)}, which it lacks itself");
        }
    }

    // The server-wide view is the operator's to hand out, one credential at a time: whoever holds it cannot pass it on
    // (revoking a credential that has it is still for anyone holding it, as for every permission).
    private static void OnlyTheOperatorGrantsServerRead(Actor actor, KeyPermissions permissions)
    {
        if (!actor.IsOperator && (permissions & KeyPermissions.ServerRead) != 0)
        {
            throw new KilnException(ErrorKind.Forbidden, "only the operator grants server:read (kiln token create ACCOUNT --permissions server:read)");
        }
    }

    // A token that expires cannot make what does not: a leaked short-lived token must not leave a lasting credential.
    private static void Lasting(Actor actor, string what)
    {
        if (actor.Token?.Expires is not null)
        {
            throw new KilnException(ErrorKind.Forbidden, $"a token that expires cannot {what} (that would outlive it)");
        }
    }

    private static string Credential(Actor actor) => actor.Token is null ? "key" : "token";

    private static T Validate<T>(Func<T> parse)
    {
        try
        {
            return parse();
        }
        catch (Exception e) when (e is ArgumentException or FormatException or Kiln.Nix.NixFormatException)
        {
            throw new KilnException(ErrorKind.Invalid, e.Message, e);
        }
    }
}
