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

/// <summary>
/// Why Kiln believes a path's contents (never who may see it: that is membership in the view). Two levels, never
/// mixed: <em>globally trusted</em> (content-addressed, signed by a key the operator trusts, or built by Kiln from
/// globally trusted inputs) — only such outputs get Kiln's build-key signature; and <em>trusted by the account</em>
/// (also signed by a key only that account trusts, or built from such inputs), which counts for that account alone.
/// </summary>
public enum PathTrust
{
    /// <summary>Someone uploaded it; nothing vouches for it beyond that account.</summary>
    Untrusted,

    /// <summary>Its path follows from its content, which was checked.</summary>
    ContentAddressed,

    /// <summary>Signed by a key the operator trusts (the server's trusted public keys).</summary>
    SignedByTrustedKey,

    /// <summary>Kiln built it from globally trusted inputs.</summary>
    Built,

    /// <summary>Signed by a key only this account trusts.</summary>
    SignedByAccountKey,

    /// <summary>Kiln built it from inputs this account trusts, not all of them globally.</summary>
    BuiltByAccountTrust,

    /// <summary>Taken from the store of an account this one trusts (<c>trusted-accounts</c>), which vouched for it no more than that.</summary>
    TrustedAccount,
}

/// <summary>The two levels of <see cref="PathTrust"/>.</summary>
public static class PathTrustLevels
{
    /// <summary>Trusted whoever asks: what Kiln's build key may vouch for.</summary>
    public static bool IsGlobal(this PathTrust trust) => trust is PathTrust.ContentAddressed or PathTrust.SignedByTrustedKey or PathTrust.Built;

    /// <summary>Trusted by the account whose record it is (globally trusted, or by its own keys).</summary>
    public static bool IsTrustedByAccount(this PathTrust trust) => trust.IsGlobal() || trust is PathTrust.SignedByAccountKey or PathTrust.BuiltByAccountTrust or PathTrust.TrustedAccount;
}

/// <summary>A path record in an account's view.</summary>
public sealed record PathRecord(ValidPathInfo Info, Provenance Provenance, PathTrust Trust);

/// <summary>A path one session of a front door holds as a temporary root, for its account.</summary>
public readonly record struct TempRoot(long Session, long Account, StorePath Path);

/// <summary>A path to register: its info, how it came, and the outputs it declares if it is a derivation.</summary>
public sealed record NewPath(ValidPathInfo Info, Provenance Provenance, PathTrust Trust, IReadOnlyDictionary<string, StorePath?>? DerivationOutputs);

/// <summary>Kinds of garbage collector roots kept in the metadata.</summary>
public enum RootKind
{
    Permanent,
    Indirect,

    /// <summary>A pin: a named root an account keeps through Kiln (<c>kiln pin add</c>, the shell, the API), not through Nix.</summary>
    Pin,
}

public sealed record RootRecord(RootKind Kind, string Name, StorePath Path);

/// <summary>A pin of an account: its name and the path it keeps.</summary>
public sealed record PinRecord(string Name, StorePath Path);

/// <summary>A path in a view's reference graph, as the garbage collector sees it.</summary>
public sealed record GraphNode(StorePath Path, IReadOnlyList<StorePath> References, StorePath? Deriver, long NarSize, NixHash NarHash, long RegistrationTime = 0)
{
    /// <summary>When the account last used it (Unix seconds; 0: not since it was registered).</summary>
    public long LastUsed { get; init; }
}

/// <summary>Registering refused because references are not valid in the view.</summary>
public sealed class MissingReferencesException(StorePath path, IReadOnlyCollection<StorePath> missing)
    : Exception($"cannot add '{path}': it refers to {string.Join(", ", missing.Select(m => $"'{m}'"))}, which {(missing.Count == 1 ? "is" : "are")} not valid in your store")
{
    public StorePath Path { get; } = path;

    public IReadOnlyCollection<StorePath> Missing { get; } = missing;
}

/// <summary>
/// Paths and roots: each account's view of the store (path records with references, signatures, derivation outputs,
/// provenance and trust), garbage-collector roots, and the compressed NAR files kept for HTTP clients. A record is
/// in exactly one account's view; queries over several views take the accounts in order of preference.
/// </summary>
public interface IPathMetadata
{
    /// <summary>A path with that hash part in the first of <paramref name="accounts"/>' views that has one.</summary>
    Task<(long Account, PathRecord Record)?> FindPathByHashPartAsync(IReadOnlyList<long> accounts, string hashPart, CancellationToken cancellationToken);

    /// <summary>The size of a NAR with that hash if some path in <paramref name="accounts"/>' views has it; null otherwise.</summary>
    Task<long?> FindNarAsync(IReadOnlyList<long> accounts, NixHash narHash, CancellationToken cancellationToken);

    /// <summary>Records a compressed NAR file kept as uploaded (its name under <c>nar/</c>).</summary>
    Task AddNarFileAsync(string file, NixHash narHash, string compression, long fileSize, CancellationToken cancellationToken);

    /// <summary>Forgets the kept compressed files of these NARs; returns their names (the caller deletes the files).</summary>
    Task<IReadOnlyList<string>> RemoveNarFilesAsync(IReadOnlyCollection<NixHash> narHashes, CancellationToken cancellationToken);

    /// <summary>The NAR hash and compression of a kept compressed NAR file, if there is one by that name.</summary>
    Task<(NixHash NarHash, string Compression)?> FindNarFileAsync(string file, CancellationToken cancellationToken);

    /// <summary>Which of <paramref name="files"/> are kept compressed NAR files the metadata still names (one query).</summary>
    Task<IReadOnlySet<string>> FindNarFilesAsync(IReadOnlyCollection<string> files, CancellationToken cancellationToken);

    /// <summary>The records of those <paramref name="paths"/> valid in the account's view.</summary>
    Task<IReadOnlyDictionary<StorePath, PathRecord>> GetPathsAsync(long account, IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken);

    Task<StorePath?> FindByHashPartAsync(long account, string hashPart, CancellationToken cancellationToken);

    /// <summary>
    /// The records of the closure of <paramref name="roots"/> in the account's view (a root not valid there is left out):
    /// one query however deep the closure is, where following references a layer at a time costs a round trip a layer.
    /// </summary>
    Task<IReadOnlyDictionary<StorePath, PathRecord>> GetClosureAsync(long account, IReadOnlyCollection<StorePath> roots, CancellationToken cancellationToken);

    Task<IReadOnlyList<StorePath>> GetAllPathsAsync(long account, CancellationToken cancellationToken);

    /// <summary>
    /// Whether several processes share this metadata (PostgreSQL): then each front door publishes its sessions'
    /// temporary roots for the others' collectors. SQLite is one server's alone, and the temp-root calls do nothing.
    /// </summary>
    bool SharesTempRoots { get; }

    /// <summary>Publishes temporary roots of sessions of <paramref name="frontDoor"/> (they count while its lease does): one round trip.</summary>
    Task PublishTempRootsAsync(string frontDoor, IReadOnlyCollection<TempRoot> roots, CancellationToken cancellationToken);

    /// <summary>Withdraws the temporary roots of one session of <paramref name="frontDoor"/> (null: all of them, as at its start).</summary>
    Task WithdrawTempRootsAsync(string frontDoor, long? session, CancellationToken cancellationToken);

    /// <summary>Renews <paramref name="frontDoor"/>'s lease on its temporary roots for <paramref name="lease"/>, by the database's clock.</summary>
    Task RenewTempRootsAsync(string frontDoor, TimeSpan lease, CancellationToken cancellationToken);

    /// <summary>The temporary roots other front doors than <paramref name="frontDoor"/> whose lease holds published for the account.</summary>
    Task<IReadOnlyList<StorePath>> GetTempRootsAsync(long account, string frontDoor, CancellationToken cancellationToken);

    /// <summary>
    /// The whole store's size, for the server's gauges: path records in all views, and the distinct NARs they name
    /// with the bytes of those (content shared by views counted once). A scan of every record: read it now and then.
    /// </summary>
    Task<StoreTotals> GetTotalsAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Records every account's storage (its view's paths and their NAR bytes) as the sample for <paramref name="day"/>
    /// (Unix days), replacing one taken earlier that day: one statement, whatever the number of accounts.
    /// </summary>
    Task RecordStorageAsync(long day, CancellationToken cancellationToken);

    /// <summary>The account's storage samples for days <paramref name="fromDay"/> (inclusive) to <paramref name="toDay"/> (exclusive), oldest first.</summary>
    Task<IReadOnlyList<StorageSample>> GetStorageHistoryAsync(long account, long fromDay, long toDay, CancellationToken cancellationToken);

    /// <summary>
    /// Adds each sample's bytes to its account's day (accounts renamed as deleted are skipped): one transaction for
    /// the lot, however many front doors add to the same day.
    /// </summary>
    Task AddTransfersAsync(IReadOnlyCollection<TransferSample> samples, CancellationToken cancellationToken);

    /// <summary>The account's transfers for days <paramref name="fromDay"/> (inclusive) to <paramref name="toDay"/> (exclusive), oldest first.</summary>
    Task<IReadOnlyList<TransferSample>> GetTransfersAsync(long account, long fromDay, long toDay, CancellationToken cancellationToken);

    /// <summary>
    /// Marks each account's paths used at the time given, where the use recorded is more than an hour older (a busy
    /// build marks its inputs again and again: at most one write per path and hour): one transaction for the lot.
    /// </summary>
    Task TouchPathsAsync(IReadOnlyCollection<(long Account, StorePath Path, long Time)> uses, CancellationToken cancellationToken);

    /// <summary>The account's storage now: its view's paths and their NAR bytes (one aggregate query).</summary>
    Task<(long Paths, long NarBytes)> GetStorageAsync(long account, CancellationToken cancellationToken);

    /// <summary>
    /// Holds the account's storage-quota lock across processes (several front doors on one database) until disposed:
    /// a commit holds it from its look at the quota until its paths are registered, so uploads through two front doors
    /// at once are counted one after the other. Null where one process writes this metadata (SQLite), whose own lock
    /// per account suffices.
    /// </summary>
    Task<IAsyncDisposable?> HoldStorageQuotaAsync(long account, CancellationToken cancellationToken);

    /// <summary>
    /// Takes the turn at the periodic work <paramref name="name"/> unless it was taken less than
    /// <paramref name="everySeconds"/> ago by the database's clock; true when this caller has it. Several front doors on
    /// one database so do work such as listing a whole bucket once per interval between them, not once each.
    /// </summary>
    Task<bool> TakeTurnAsync(string name, long everySeconds, CancellationToken cancellationToken);

    Task<IReadOnlySet<StorePath>> GetReferrersAsync(long account, StorePath path, CancellationToken cancellationToken);

    /// <summary>The outputs a derivation valid in the view declares, or null when it is not valid there.</summary>
    Task<IReadOnlyDictionary<string, StorePath?>?> GetDerivationOutputsAsync(long account, StorePath drvPath, CancellationToken cancellationToken);

    /// <summary>The outputs each of <paramref name="drvPaths"/> valid in the view declares (one statement); derivations not valid there are absent.</summary>
    Task<IReadOnlyDictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>> GetDerivationOutputsAsync(long account, IReadOnlyCollection<StorePath> drvPaths,
        CancellationToken cancellationToken);

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
    /// The "records changed" signal: moves whenever a path record that was there changes or goes (signatures added,
    /// paths deleted) — through any process sharing this metadata; registrations only add records and leave it alone.
    /// Caches of rendered path records compare it. SQLite keeps it in the one server process that owns the database
    /// (the data directory's lock; offline commands run only while no server does); a shared database notifies every
    /// server (PostgreSQL: LISTEN/NOTIFY).
    /// </summary>
    long PathRecordsVersion { get; }

    /// <summary>The whole reference graph of a view.</summary>
    Task<IReadOnlyList<GraphNode>> GetGraphAsync(long account, CancellationToken cancellationToken);

    /// <summary>Removes paths from a view in one transaction; referrers must come before what they refer to.</summary>
    Task DeletePathsAsync(long account, IReadOnlyList<StorePath> paths, CancellationToken cancellationToken);

    /// <summary>Which of the NAR hashes any view (of any account) still names.</summary>
    Task<IReadOnlySet<NixHash>> GetReferencedBlobsAsync(IReadOnlyCollection<NixHash> narHashes, CancellationToken cancellationToken);

    /// <summary>
    /// Keeps collections and registrations of every process on this metadata apart (several front doors on one
    /// database): a registration holds it shared from committing its blobs until its paths are registered, a collection
    /// exclusively while it marks and deletes. Null when one process alone writes this metadata (SQLite: the server),
    /// whose in-process lock suffices; dispose what is returned to release it.
    /// </summary>
    Task<ICollectionLock?> LockAgainstCollectionAsync(bool exclusive, CancellationToken cancellationToken);

    Task AddRootAsync(long account, RootKind kind, string name, StorePath path, CancellationToken cancellationToken);

    Task<IReadOnlyList<RootRecord>> GetRootsAsync(long account, CancellationToken cancellationToken);

    Task RemoveRootAsync(long account, RootKind kind, string name, CancellationToken cancellationToken);
}

/// <summary>An account's storage on a day (Unix days: seconds since the epoch / 86,400, UTC), as last sampled that day.</summary>
public readonly record struct StorageSample(long Day, long Paths, long NarBytes)
{
    public const long SecondsPerDay = 86_400;

    public static long DayOf(DateTimeOffset time) => time.ToUnixTimeSeconds() / SecondsPerDay;
}

/// <summary>NAR bytes an account uploaded and downloaded on a day (Unix days, UTC).</summary>
public readonly record struct TransferSample(long Account, long Day, long Uploaded, long Downloaded);

/// <summary>The store's size: path records in all views, and the distinct NARs they name with their bytes.</summary>
public readonly record struct StoreTotals(long Paths, long Nars, long NarBytes);

/// <summary>The database's collection lock, held (<see cref="IPathMetadata.LockAgainstCollectionAsync"/>).</summary>
public interface ICollectionLock : IAsyncDisposable
{
    /// <summary>
    /// Whether another process is waiting for this lock: a front door that holds it shared for as long as its
    /// registrations overlap asks now and then, and lets it go when a collection is queued behind it.
    /// </summary>
    Task<bool> IsAwaitedAsync(CancellationToken cancellationToken);
}
