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
        Materialised = options.MaterialisedAccount is null ? null : new MaterialisedView(options.MaterialisedRoot, Blobs);
        GarbageCollector = new GarbageCollector(metadata, Blobs, TempRoots, _gcLock, options, this);
    }

    /// <summary>The unpacked tree of <see cref="StoreOptions.MaterialisedAccount"/>'s view, if there is one.</summary>
    public MaterialisedView? Materialised { get; }

    private long? _materialisedAccountId;

    /// <summary>The unpacked tree for <paramref name="accountId"/>, when that account's view is materialised.</summary>
    internal MaterialisedView? MaterialisedFor(long accountId) => _materialisedAccountId == accountId ? Materialised : null;

    /// <summary>Brings the materialised tree in line with its account's view (at start).</summary>
    public async Task ReconcileMaterialisedAsync(CancellationToken cancellationToken)
    {
        if (Materialised is null)
        {
            return;
        }

        var graph = await Metadata.GetGraphAsync(_materialisedAccountId!.Value, cancellationToken).ConfigureAwait(false);
        await Materialised.ReconcileAsync(graph.Select(n => (n.Path, n.NarHash)).ToList(), cancellationToken).ConfigureAwait(false);
    }

    public StoreOptions Options { get; }

    public IMetadataStore Metadata { get; }

    /// <summary>Fetches from accounts' upstream binary caches.</summary>
    public Upstream.UpstreamSubstituter Upstream { get; } = new();

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
        return await CreateAsync(options, metadata, cancellationToken).ConfigureAwait(false);
    }

    private static async Task<KilnStore> CreateAsync(StoreOptions options, IMetadataStore metadata, CancellationToken cancellationToken)
    {
        var store = new KilnStore(options, metadata);
        if (options.MaterialisedAccount is { } account)
        {
            store._materialisedAccountId = await metadata.GetOrCreateAccountAsync(account, cancellationToken).ConfigureAwait(false);
        }

        return store;
    }

    /// <summary>Opens a store over an existing metadata provider (the contract tests run it on each).</summary>
    public static async Task<KilnStore> OpenAsync(StoreOptions options, IMetadataStore metadata, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        await metadata.MigrateAsync(cancellationToken).ConfigureAwait(false);
        return await CreateAsync(options, metadata, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// A session's view of one account (created on first use). <paramref name="clientRoot"/> is where the client's
    /// file system root is from here, when the client is local: its GC root symlinks are resolved under it.
    /// Dispose the view when the session ends.
    /// </summary>
    public async Task<StoreView> OpenViewAsync(string account, CancellationToken cancellationToken, string? clientRoot = null)
    {
        var id = await Metadata.GetOrCreateAccountAsync(account, cancellationToken).ConfigureAwait(false);
        return new StoreView(this, id, account, clientRoot);
    }

    public async ValueTask DisposeAsync()
    {
        Upstream.Dispose();
        await Metadata.DisposeAsync().ConfigureAwait(false);
        _gcLock.Dispose();
    }
}
