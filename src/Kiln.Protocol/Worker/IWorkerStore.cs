using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;

namespace Kiln.Protocol.Worker;

/// <summary>
/// The store as one worker-protocol session sees it: one account's view, with the session's temporary roots.
/// Methods throw <see cref="KilnException"/> for failures the client should hear about; anything else is an
/// internal error. Methods taking many paths answer them in one round trip to the metadata store.
/// </summary>
public interface IWorkerStore
{
    Task<IReadOnlySet<StorePath>> QueryValidPathsAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken);

    /// <summary>
    /// Substitutes what it can of <paramref name="paths"/> from upstream caches (QueryValidPaths with its substitute
    /// flag, EnsurePath); returns those valid afterwards. A store without upstream caches substitutes nothing.
    /// </summary>
    Task<IReadOnlySet<StorePath>> SubstituteAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken, Action<string>? warn = null) =>
        QueryValidPathsAsync(paths, cancellationToken);

    /// <summary>The info of each path that is valid in the view; missing paths are absent from the result.</summary>
    Task<IReadOnlyDictionary<StorePath, ValidPathInfo>> QueryPathInfosAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken);

    Task<StorePath?> QueryPathFromHashPartAsync(string hashPart, CancellationToken cancellationToken);

    Task<IReadOnlySet<StorePath>> QueryReferrersAsync(StorePath path, CancellationToken cancellationToken);

    Task<IReadOnlySet<StorePath>> QueryValidDeriversAsync(StorePath path, CancellationToken cancellationToken);

    /// <summary>Output name → output path (null when not statically known) of a derivation valid in the view.</summary>
    Task<IReadOnlyDictionary<string, StorePath?>> QueryDerivationOutputMapAsync(StorePath drvPath, CancellationToken cancellationToken);

    Task<IReadOnlySet<StorePath>> QueryAllValidPathsAsync(CancellationToken cancellationToken);

    /// <summary>What realising the targets takes; warnings (an upstream cache that failed) go to <paramref name="log"/>.</summary>
    Task<MissingPaths> QueryMissingAsync(IReadOnlyList<DerivedPath> targets, IClientLog log, CancellationToken cancellationToken);

    /// <summary>Adds a path whose info the client declares; the NAR is verified against it before anything is registered.</summary>
    Task AddToStoreAsync(ValidPathInfo info, Stream nar, bool repair, bool checkSignatures, CancellationToken cancellationToken);

    /// <summary>Starts a group of uploads that are registered together, all or nothing (AddMultipleToStore).</summary>
    IUploadBatch BeginUploads(bool repair, bool checkSignatures);

    /// <summary>
    /// Adds content whose path the server computes: <paramref name="data"/> is the flat contents for text and flat
    /// methods, a NAR for recursive ones.
    /// </summary>
    Task<ValidPathInfo> AddContentAddressedAsync(string name, ContentAddressMethodAndAlgorithm method, Stream data,
        IReadOnlySet<StorePath> references, bool repair, CancellationToken cancellationToken);

    /// <summary>The blob holding a path's NAR, or null when the path is not valid in the view.</summary>
    Task<NarBlob?> OpenNarAsync(StorePath path, CancellationToken cancellationToken);

    Task AddTempRootAsync(StorePath path, CancellationToken cancellationToken);

    Task AddIndirectRootAsync(string link, CancellationToken cancellationToken);

    /// <summary>Roots the path under <paramref name="rootName"/>; returns the root's name.</summary>
    Task<string> AddPermRootAsync(StorePath path, string rootName, CancellationToken cancellationToken);

    /// <summary>Root name (or link) → rooted path.</summary>
    Task<IReadOnlyList<KeyValuePair<string, StorePath>>> FindRootsAsync(CancellationToken cancellationToken);

    Task<GcResult> CollectGarbageAsync(GcRequest request, CancellationToken cancellationToken);

    Task AddSignaturesAsync(StorePath path, IReadOnlySet<string> signatures, CancellationToken cancellationToken);

    /// <summary>Checks the view (and with <paramref name="checkContents"/> re-hashes its NARs); returns whether errors were found.</summary>
    Task<bool> VerifyStoreAsync(bool checkContents, bool repair, IClientLog log, CancellationToken cancellationToken);

    /// <summary>Makes the path valid (substituting it in later issues); fails if it cannot.</summary>
    Task EnsurePathAsync(StorePath path, CancellationToken cancellationToken);
}

/// <summary>A group of uploads registered together when committed.</summary>
public interface IUploadBatch : IAsyncDisposable
{
    Task AddAsync(ValidPathInfo info, Stream nar, CancellationToken cancellationToken);

    Task CommitAsync(CancellationToken cancellationToken);
}

/// <summary>
/// A path's NAR, ready to send: <see cref="Size"/> bytes from <see cref="Content"/> — a <see cref="FileStream"/> when the
/// store holds it as a local file, which sessions send with sendfile. Whoever opened it disposes it.
/// </summary>
public sealed class NarBlob(Stream content, long size, NixHash narHash) : IAsyncDisposable
{
    public Stream Content => content;

    public long Size => size;

    public NixHash NarHash => narHash;

    public ValueTask DisposeAsync() => content.DisposeAsync();
}

/// <summary>QueryMissing's answer.</summary>
public sealed record MissingPaths(
    IReadOnlySet<StorePath> WillBuild,
    IReadOnlySet<StorePath> WillSubstitute,
    IReadOnlySet<StorePath> Unknown,
    long DownloadSize,
    long NarSize);

/// <summary>What CollectGarbage should do (Nix's <c>GCOptions</c>).</summary>
public enum GcAction
{
    ReturnLive = 0,
    ReturnDead = 1,
    DeleteDead = 2,
    DeleteSpecific = 3,
}

public sealed record GcRequest(GcAction Action, IReadOnlySet<StorePath> PathsToDelete, long MaxFreed);

public sealed record GcResult(IReadOnlyList<StorePath> Paths, long BytesFreed);

/// <summary>Messages for the client's terminal during an operation.</summary>
public interface IClientLog
{
    void Log(string message);
}
