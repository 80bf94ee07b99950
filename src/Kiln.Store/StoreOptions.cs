namespace Kiln.Store;

/// <summary>How the store keeps its data.</summary>
public sealed record StoreOptions
{
    /// <summary>The data directory: <c>kiln.db</c> and <c>blobs/</c>.</summary>
    public required string DataDirectory { get; init; }

    /// <summary>
    /// fsync each blob before it is renamed into place. Off by default, as Nix's own store does not fsync paths; the
    /// metadata database is always crash-safe (WAL).
    /// </summary>
    public bool FsyncBlobs { get; init; }

    /// <summary>The largest NAR accepted in one upload.</summary>
    public long MaxNarSize { get; init; } = 64L << 30;

    /// <summary>
    /// Blobs younger than this are never swept by the garbage collector, in case a registration by another server
    /// process is on its way.
    /// </summary>
    public TimeSpan BlobGracePeriod { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>
    /// The account whose view is unpacked as a store tree under <see cref="MaterialisedRoot"/> (the unix socket's
    /// account: Nix's unix:// store reads path contents from disk). Null for none.
    /// </summary>
    public string? MaterialisedAccount { get; init; }

    /// <summary>Where that tree lives: clients use <c>unix://…?root=</c> this.</summary>
    public string MaterialisedRoot => Path.Combine(DataDirectory, "root");

    /// <summary>Where the store logs what an operator needs (collections, failing upstream caches, lost content).</summary>
    public Microsoft.Extensions.Logging.ILogger Logger { get; init; } = Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

    /// <summary>Upstream caches for accounts that name none of their own (<c>kiln serve --substituters</c>).</summary>
    public IReadOnlyList<string> DefaultSubstituters { get; init; } = [];

    /// <summary>Keys trusted for every account's upstream caches (<c>kiln serve --trusted-public-keys</c>).</summary>
    public IReadOnlyList<string> DefaultTrustedPublicKeys { get; init; } = [];

    /// <summary>Where the metadata is (<see cref="Metadata.MetadataStores"/>); by default what the data directory is bound to.</summary>
    public string? MetadataUrl { get; init; }

    public string EffectiveMetadataUrl => MetadataUrl ?? Metadata.MetadataStores.ForDataDirectory(DataDirectory);

    /// <summary>Compressed NARs kept as HTTP clients uploaded them (they go when their blob goes).</summary>
    public string NarFilesDirectory => Path.Combine(DataDirectory, "nar-files");

    public string BlobDirectory => Path.Combine(DataDirectory, "blobs");

    /// <summary>Where blobs are when not in <see cref="BlobDirectory"/> (<see cref="Blobs.BlobStores"/>); by default what the data directory is bound to.</summary>
    public string? BlobStoreUrl { get; init; }

    /// <summary>Recently used blobs of a remote blob store, kept on local disk.</summary>
    public string BlobCacheDirectory => Path.Combine(DataDirectory, "blob-cache");

    /// <summary>The most bytes <see cref="BlobCacheDirectory"/> keeps (<c>kiln serve --blob-cache-size</c>).</summary>
    public long BlobCacheBytes { get; init; } = 10L << 30;

    /// <summary>Build logs, one file per build (<see cref="Logs.FileBuildLogStore"/>).</summary>
    public string LogDirectory => Path.Combine(DataDirectory, "logs", "builds");

    /// <summary>Scratch files of the store's own (flat uploads spooled to learn their size); emptied as they are used.</summary>
    public string TemporaryDirectory => Path.Combine(DataDirectory, "tmp");
}
