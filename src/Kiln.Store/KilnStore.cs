using Kiln.Store.Blobs;
using Kiln.Store.Gc;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.Store;

/// <summary>
/// The store: global content (NAR blobs, stored once by hash) and per-account views (path records in the
/// metadata). Open a <see cref="StoreView"/> for each session; the view is the only way to see paths.
/// </summary>
public sealed class KilnStore : IAsyncDisposable
{
    private readonly GcLock _gcLock = new();

    private KilnStore(StoreOptions options, IMetadataStore metadata)
    {
        Options = options;
        Metadata = metadata;
        Blobs = new BlobStore(options.BlobDirectory, options.FsyncBlobs);
        TempRoots = new TempRoots();
        GarbageCollector = new GarbageCollector(metadata, Blobs, TempRoots, _gcLock, options);
    }

    public StoreOptions Options { get; }

    public IMetadataStore Metadata { get; }

    public BlobStore Blobs { get; }

    public TempRoots TempRoots { get; }

    public GarbageCollector GarbageCollector { get; }

    internal GcLock GcLock => _gcLock;

    /// <summary>Opens (creating if needed) the embedded store: SQLite metadata and a blob directory under the data directory.</summary>
    public static async Task<KilnStore> OpenAsync(StoreOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        Directory.CreateDirectory(options.DataDirectory);
        var metadata = new SqliteMetadataStore(options.DatabasePath);
        await metadata.MigrateAsync(cancellationToken).ConfigureAwait(false);
        return new KilnStore(options, metadata);
    }

    /// <summary>Opens a store over an existing metadata provider (the contract tests run it on each).</summary>
    public static async Task<KilnStore> OpenAsync(StoreOptions options, IMetadataStore metadata, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        await metadata.MigrateAsync(cancellationToken).ConfigureAwait(false);
        return new KilnStore(options, metadata);
    }

    /// <summary>A session's view of one account (created on first use). Dispose it when the session ends.</summary>
    public async Task<StoreView> OpenViewAsync(string account, CancellationToken cancellationToken)
    {
        var id = await Metadata.GetOrCreateAccountAsync(account, cancellationToken).ConfigureAwait(false);
        return new StoreView(this, id, account);
    }

    public async ValueTask DisposeAsync()
    {
        await Metadata.DisposeAsync().ConfigureAwait(false);
        _gcLock.Dispose();
    }
}
