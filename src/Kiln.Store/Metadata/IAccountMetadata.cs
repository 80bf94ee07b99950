using Kiln.Store.Accounts;

namespace Kiln.Store.Metadata;

public sealed record AccountRecord(long Id, string Name);

/// <summary>An HTTP access token (only its hash is stored) and what it allows.</summary>
public sealed record TokenRecord(long Id, long AccountId, string AccountName, string Description, KeyPermissions Permissions,
    long? Expires, long? Revoked, long Created)
{
    /// <summary>Not revoked and not expired at <paramref name="now"/> (Unix seconds).</summary>
    public bool IsValidAt(long now) => Revoked is null && (Expires is null || now < Expires);
}

/// <summary>A login key and the account it belongs to.</summary>
public sealed record SshKeyRecord(long Id, long AccountId, string AccountName, SshPublicKey Key, KeyPermissions Permissions, bool Enabled, long Created)
{
    public string Fingerprint => Key.Fingerprint;
}

/// <summary>A key that already belongs to an account (keys identify accounts, so each is in one).</summary>
public sealed class DuplicateKeyException(string fingerprint)
    : Exception($"the key {fingerprint} is already registered (a key can belong to one account only)")
{
    public string Fingerprint { get; } = fingerprint;
}

/// <summary>
/// Accounts and their credentials: SSH login keys (each with its permissions), HTTP tokens (kept as hashes), signing
/// keys, and whether the account's view is a public cache. Rules about who may change what live above this port
/// (the account services); this only keeps the records.
/// </summary>
public interface IAccountMetadata
{
    Task<long> GetOrCreateAccountAsync(string name, CancellationToken cancellationToken);

    Task<IReadOnlyList<AccountRecord>> ListAccountsAsync(CancellationToken cancellationToken);

    /// <summary>Creates an account; null if the name is taken.</summary>
    Task<AccountRecord?> TryCreateAccountAsync(string name, CancellationToken cancellationToken);

    Task<AccountRecord?> FindAccountAsync(string name, CancellationToken cancellationToken);

    /// <summary>
    /// Deletes the account and all that is its, in one transaction: its view (paths, their references, signatures and
    /// derivation outputs), roots and pins, keys, tokens, signing key, settings, storage samples, tags, and the builds
    /// only it was for (emptied: ids are never given out again). A build it started that other accounts were for too
    /// stays theirs; the account's row stays too, nameless (<see cref="Accounts.AccountName.DeletedPrefix"/>), so its id
    /// is never another's. Returns the ids of the builds deleted (their logs are the caller's to delete), or null when
    /// there is no such account (or it was deleted already).
    /// </summary>
    /// <exception cref="Protocol.KilnException">A build the account was for is running (Conflict): nothing was deleted.</exception>
    Task<IReadOnlyList<long>?> DeleteAccountAsync(long account, CancellationToken cancellationToken);

    /// <summary>Adds a login key to an account.</summary>
    /// <exception cref="DuplicateKeyException">The key already belongs to an account (this one or another).</exception>
    Task<SshKeyRecord> AddSshKeyAsync(long account, SshPublicKey key, KeyPermissions permissions, CancellationToken cancellationToken);

    Task<IReadOnlyList<SshKeyRecord>> ListSshKeysAsync(long account, CancellationToken cancellationToken);

    /// <summary>Removes the account's key with that fingerprint; false if it has none.</summary>
    Task<bool> RemoveSshKeyAsync(long account, string fingerprint, CancellationToken cancellationToken);

    /// <summary>The key with that id (the bridge names the key sshd authenticated by it).</summary>
    Task<SshKeyRecord?> GetSshKeyAsync(long id, CancellationToken cancellationToken);

    /// <summary>The key with that type and blob, whichever account it belongs to (logins start here).</summary>
    Task<SshKeyRecord?> FindSshKeyAsync(string type, string blob, CancellationToken cancellationToken);

    /// <summary>Makes the account's view readable without a token over HTTP (or private again); false if no such account.</summary>
    Task<bool> SetPublicCacheAsync(long account, bool isPublic, CancellationToken cancellationToken);

    /// <summary>The accounts whose views anonymous HTTP requests read.</summary>
    Task<IReadOnlyList<long>> GetPublicCacheAccountsAsync(CancellationToken cancellationToken);

    /// <summary>Adds a token, given the SHA-256 (hex) of its secret.</summary>
    Task<TokenRecord> AddTokenAsync(long account, string tokenHash, string description, KeyPermissions permissions, long? expires, CancellationToken cancellationToken);

    /// <summary>The token with that hash, revoked or expired ones included (the caller decides).</summary>
    Task<TokenRecord?> FindTokenAsync(string tokenHash, CancellationToken cancellationToken);

    Task<IReadOnlyList<TokenRecord>> ListTokensAsync(long account, CancellationToken cancellationToken);

    /// <summary>Revokes the account's token; false if it has no such token or it was revoked already.</summary>
    Task<bool> RevokeTokenAsync(long account, long id, CancellationToken cancellationToken);
}
