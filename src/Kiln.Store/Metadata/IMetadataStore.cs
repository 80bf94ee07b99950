using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;

namespace Kiln.Store.Metadata;

/// <summary>How a path came into an account's view.</summary>
public enum Provenance
{
    Uploaded,
    Built,
    Substituted,
    Shared,
}

/// <summary>Why Kiln believes a path's contents (never who may see it: that is membership in the view).</summary>
public enum PathTrust
{
    /// <summary>Someone uploaded it; nothing vouches for it beyond that account.</summary>
    Untrusted,

    /// <summary>Its path follows from its content, which was checked.</summary>
    ContentAddressed,

    /// <summary>Signed by a key the account trusts.</summary>
    SignedByTrustedKey,

    /// <summary>Kiln built it from trusted inputs.</summary>
    Built,
}

/// <summary>A path record in an account's view.</summary>
public sealed record PathRecord(ValidPathInfo Info, Provenance Provenance, PathTrust Trust);

/// <summary>A path to register: its info, how it came, and the outputs it declares if it is a derivation.</summary>
public sealed record NewPath(ValidPathInfo Info, Provenance Provenance, PathTrust Trust, IReadOnlyDictionary<string, StorePath?>? DerivationOutputs);

/// <summary>Kinds of garbage collector roots kept in the metadata.</summary>
public enum RootKind
{
    Permanent,
    Indirect,
}

public sealed record RootRecord(RootKind Kind, string Name, StorePath Path);

public sealed record AccountRecord(long Id, string Name);

/// <summary>An account's upstream caches: space-separated URLs and keys, and netrc-format credentials (all may be empty).</summary>
public sealed record UpstreamSettings(string Substituters, string TrustedPublicKeys, string Netrc);

/// <summary>An HTTP access token (only its hash is stored) and what it allows.</summary>
public sealed record TokenRecord(long Id, long AccountId, string AccountName, string Description, Accounts.KeyPermissions Permissions,
    long? Expires, long? Revoked, long Created)
{
    /// <summary>Not revoked and not expired at <paramref name="now"/> (Unix seconds).</summary>
    public bool IsValidAt(long now) => Revoked is null && (Expires is null || now < Expires);
}

/// <summary>A login key and the account it belongs to.</summary>
public sealed record SshKeyRecord(long Id, long AccountId, string AccountName, Accounts.SshPublicKey Key, Accounts.KeyPermissions Permissions, bool Enabled, long Created)
{
    public string Fingerprint => Key.Fingerprint;
}

/// <summary>A key that already belongs to an account (keys identify accounts, so each is in one).</summary>
public sealed class DuplicateKeyException(string fingerprint)
    : Exception($"the key {fingerprint} is already registered (a key can belong to one account only)")
{
    public string Fingerprint { get; } = fingerprint;
}

/// <summary>A path in a view's reference graph, as the garbage collector sees it.</summary>
public sealed record GraphNode(StorePath Path, IReadOnlyList<StorePath> References, StorePath? Deriver, long NarSize, NixHash NarHash);

/// <summary>Registering refused because references are not valid in the view.</summary>
public sealed class MissingReferencesException(StorePath path, IReadOnlyCollection<StorePath> missing)
    : Exception($"cannot add '{path}': it refers to {string.Join(", ", missing.Select(m => $"'{m}'"))}, which {(missing.Count == 1 ? "is" : "are")} not valid in your store")
{
    public StorePath Path { get; } = path;

    public IReadOnlyCollection<StorePath> Missing { get; } = missing;
}

/// <summary>
/// Kiln's metadata: accounts and their views of the store (path records with references, signatures and derivation
/// outputs), and garbage collector roots. SQLite is the embedded default; PostgreSQL implements the same contract
/// when Kiln scales out. Every method that takes many paths answers in one statement, not one per path.
/// </summary>
public interface IMetadataStore : IAsyncDisposable
{
    /// <summary>Creates or upgrades the schema (numbered migrations, each applied once).</summary>
    Task MigrateAsync(CancellationToken cancellationToken);

    Task<long> GetOrCreateAccountAsync(string name, CancellationToken cancellationToken);

    Task<IReadOnlyList<AccountRecord>> ListAccountsAsync(CancellationToken cancellationToken);

    /// <summary>Creates an account; null if the name is taken.</summary>
    Task<AccountRecord?> TryCreateAccountAsync(string name, CancellationToken cancellationToken);

    Task<AccountRecord?> FindAccountAsync(string name, CancellationToken cancellationToken);

    /// <summary>Adds a login key to an account.</summary>
    /// <exception cref="DuplicateKeyException">The key already belongs to an account (this one or another).</exception>
    Task<SshKeyRecord> AddSshKeyAsync(long account, Accounts.SshPublicKey key, Accounts.KeyPermissions permissions, CancellationToken cancellationToken);

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
    Task<TokenRecord> AddTokenAsync(long account, string tokenHash, string description, Accounts.KeyPermissions permissions, long? expires, CancellationToken cancellationToken);

    /// <summary>The token with that hash, revoked or expired ones included (the caller decides).</summary>
    Task<TokenRecord?> FindTokenAsync(string tokenHash, CancellationToken cancellationToken);

    Task<IReadOnlyList<TokenRecord>> ListTokensAsync(long account, CancellationToken cancellationToken);

    /// <summary>Revokes the account's token; false if it has no such token or it was revoked already.</summary>
    Task<bool> RevokeTokenAsync(long account, long id, CancellationToken cancellationToken);

    /// <summary>Sets the account's signing key (Nix's secret key format), replacing any it had.</summary>
    Task SetSigningKeyAsync(long account, string secretKey, CancellationToken cancellationToken);

    Task<string?> GetSigningKeyAsync(long account, CancellationToken cancellationToken);

    /// <summary>A path with that hash part in the first of <paramref name="accounts"/>' views that has one.</summary>
    Task<(long Account, PathRecord Record)?> FindPathByHashPartAsync(IReadOnlyList<long> accounts, string hashPart, CancellationToken cancellationToken);

    /// <summary>The size of a NAR with that hash if some path in <paramref name="accounts"/>' views has it; null otherwise.</summary>
    Task<long?> FindNarAsync(IReadOnlyList<long> accounts, NixHash narHash, CancellationToken cancellationToken);

    Task<UpstreamSettings> GetUpstreamSettingsAsync(long account, CancellationToken cancellationToken);

    /// <summary>Changes the account's upstream settings; a null field is left as it is.</summary>
    Task SetUpstreamSettingsAsync(long account, string? substituters, string? trustedPublicKeys, string? netrc, CancellationToken cancellationToken);

    /// <summary>Records a compressed NAR file kept as uploaded (its name under <c>nar/</c>).</summary>
    Task AddNarFileAsync(string file, NixHash narHash, string compression, long fileSize, CancellationToken cancellationToken);

    /// <summary>Forgets the kept compressed files of these NARs; returns their names (the caller deletes the files).</summary>
    Task<IReadOnlyList<string>> RemoveNarFilesAsync(IReadOnlyCollection<NixHash> narHashes, CancellationToken cancellationToken);

    /// <summary>The NAR hash and compression of a kept compressed NAR file, if there is one by that name.</summary>
    Task<(NixHash NarHash, string Compression)?> FindNarFileAsync(string file, CancellationToken cancellationToken);

    /// <summary>The records of those <paramref name="paths"/> valid in the account's view.</summary>
    Task<IReadOnlyDictionary<StorePath, PathRecord>> GetPathsAsync(long account, IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken);

    Task<StorePath?> FindByHashPartAsync(long account, string hashPart, CancellationToken cancellationToken);

    Task<IReadOnlyList<StorePath>> GetAllPathsAsync(long account, CancellationToken cancellationToken);

    Task<IReadOnlySet<StorePath>> GetReferrersAsync(long account, StorePath path, CancellationToken cancellationToken);

    /// <summary>The outputs a derivation valid in the view declares, or null when it is not valid there.</summary>
    Task<IReadOnlyDictionary<string, StorePath?>?> GetDerivationOutputsAsync(long account, StorePath drvPath, CancellationToken cancellationToken);

    /// <summary>Derivations valid in the view that declare <paramref name="output"/> as an output.</summary>
    Task<IReadOnlySet<StorePath>> GetValidDeriversAsync(long account, StorePath output, CancellationToken cancellationToken);

    /// <summary>
    /// Registers paths in one transaction: all or none. Paths already valid in the view are left as they are.
    /// References must be valid in the view or registered earlier in the same call (a path may refer to itself).
    /// </summary>
    /// <exception cref="MissingReferencesException">A reference is not valid.</exception>
    Task RegisterAsync(long account, IReadOnlyList<NewPath> paths, CancellationToken cancellationToken);

    Task AddSignaturesAsync(long account, StorePath path, IReadOnlyCollection<string> signatures, CancellationToken cancellationToken);

    /// <summary>
    /// Changes whenever this store object changes or removes a path record that was there (signatures added, paths
    /// deleted); registrations only add records and leave it alone. Caches of rendered path records compare it.
    /// </summary>
    long PathRecordsVersion { get; }

    /// <summary>The whole reference graph of a view.</summary>
    Task<IReadOnlyList<GraphNode>> GetGraphAsync(long account, CancellationToken cancellationToken);

    /// <summary>Removes paths from a view in one transaction; referrers must come before what they refer to.</summary>
    Task DeletePathsAsync(long account, IReadOnlyList<StorePath> paths, CancellationToken cancellationToken);

    /// <summary>Which of the NAR hashes any view (of any account) still names.</summary>
    Task<IReadOnlySet<NixHash>> GetReferencedBlobsAsync(IReadOnlyCollection<NixHash> narHashes, CancellationToken cancellationToken);

    Task AddRootAsync(long account, RootKind kind, string name, StorePath path, CancellationToken cancellationToken);

    Task<IReadOnlyList<RootRecord>> GetRootsAsync(long account, CancellationToken cancellationToken);

    Task RemoveRootAsync(long account, RootKind kind, string name, CancellationToken cancellationToken);

    /// <summary>Records a finished build; returns its id.</summary>
    Task<long> RecordBuildAsync(BuildRecord build, CancellationToken cancellationToken);

    /// <summary>The latest successful build with this step key (the derivation and its inputs' contents), if any.</summary>
    Task<BuildRecord?> FindSuccessfulBuildAsync(string stepKey, CancellationToken cancellationToken);

    /// <summary>The latest builds, newest first; of one account, or of all when <paramref name="account"/> is null.</summary>
    /// <summary>The build with that id, if it ran for <paramref name="account"/>.</summary>
    Task<BuildRecord?> GetBuildAsync(long account, long id, CancellationToken cancellationToken);

    Task<IReadOnlyList<BuildRecord>> ListBuildsAsync(long? account, int limit, CancellationToken cancellationToken);
}

/// <summary>A build Kiln ran. Times are Unix seconds; outputs are the scheduler's JSON, opaque to the metadata store.</summary>
public sealed record BuildRecord
{
    public long Id { get; init; }

    public required string StepKey { get; init; }

    /// <summary>The derivation's base name.</summary>
    public required string DrvPath { get; init; }

    /// <summary>The account whose request ran the build.</summary>
    public required long AccountId { get; init; }

    public required bool Succeeded { get; init; }

    public string Failure { get; init; } = "";

    public string Error { get; init; } = "";

    public long Started { get; init; }

    public long Stopped { get; init; }

    public long? CpuUserMicroseconds { get; init; }

    public long? CpuSystemMicroseconds { get; init; }

    public long? PeakMemory { get; init; }

    public string OutputsJson { get; init; } = "[]";
}
