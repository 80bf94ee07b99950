using Kiln.Nix.StorePaths;
using Kiln.Protocol.Worker;
using Kiln.Store.Accounts;
using Kiln.Store.Blobs;
using Kiln.Store.Gc;
using Kiln.Store.Logs;
using Kiln.Store.Metadata;

namespace Kiln.Store;

/// <summary>
/// The store: global content (NAR blobs, stored once by hash) and per-account views (path records in the
/// metadata). Open a <see cref="StoreView"/> for each session; the view is the only way to see paths.
/// </summary>
public sealed class KilnStore : IAsyncDisposable
{
    private readonly GcLock _gcLock;
    private readonly FileBuildLogStore _localLogs; // this data directory's logs, whether or not they are shared

    private KilnStore(StoreOptions options, IMetadataStore metadata, string installation)
    {
        Options = options;
        Metadata = metadata;
        _gcLock = new GcLock(metadata.LockAgainstCollectionAsync);
        Blobs = BlobStores.Open(options);
        TempRoots = new TempRoots(metadata, _gcLock, options.Logger);
        Usage = new UsageMeter(metadata, options.Logger, TimeSpan.FromSeconds(5));
        KeptNarFiles = new KeptNarFiles(options.NarFilesDirectory, Blobs as ISharedFiles);
        _localLogs = new FileBuildLogStore(options.LogDirectory, options.Logger);
        Logs = Blobs is ISharedFiles shared ? new SharedBuildLogStore(_localLogs, shared, installation) : _localLogs; // a bucket front doors share
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

    internal IMetadataStore Metadata { get; }

    /// <summary>Accounts and their credentials (the account services' and the logins' port onto the metadata).</summary>
    public IAccountMetadata Accounts => Metadata;

    /// <summary>Per-account settings; accounts' credentials (netrc) are sealed at rest (<see cref="CredentialSeal"/>).</summary>
    public ISettingsMetadata Settings => _settings ??= new SealedSettings(Metadata, SealLoader);

    /// <summary>The key accounts' credentials are sealed with in the database (read, or made, on first use).</summary>
    public CredentialSeal CredentialSeal => SealLoader.Value;

    // (A key that could not be read is tried again next time: the failure is not kept.)
    private Lazy<CredentialSeal> SealLoader => _seal ??= new Lazy<CredentialSeal>(() => CredentialSeal.ForDataDirectory(Options.DataDirectory), LazyThreadSafetyMode.PublicationOnly);

    private SealedSettings? _settings;

    private Lazy<CredentialSeal>? _seal;

    /// <summary>Seals accounts' credentials stored before sealing existed (kiln serve does at start); returns how many it sealed.</summary>
    public async Task<int> SealLegacyCredentialsAsync(CancellationToken cancellationToken)
    {
        var sealedCount = 0;
        foreach (var account in await Metadata.ListAccountsAsync(cancellationToken).ConfigureAwait(false))
        {
            var stored = await Metadata.GetUpstreamSettingsAsync(account.Id, cancellationToken).ConfigureAwait(false);
            if (stored.Netrc.Length > 0 && !CredentialSeal.IsSealed(stored.Netrc))
            {
                await Settings.SetUpstreamSettingsAsync(account.Id, null, null, stored.Netrc, cancellationToken).ConfigureAwait(false);
                sealedCount++;
            }

            if (await Metadata.GetSigningKeyAsync(account.Id, cancellationToken).ConfigureAwait(false) is { } key && !CredentialSeal.IsSealed(key))
            {
                await Settings.SetSigningKeyAsync(account.Id, key, cancellationToken).ConfigureAwait(false);
                sealedCount++;
            }
        }

        return sealedCount;
    }

    /// <summary>
    /// The accounts' storage quotas, which every upload (SSH, socket, HTTP) is checked against, and retention, which
    /// the server's collections honour; null: none. Set once, by what composes the store, before it serves.
    /// </summary>
    public IAccountPolicy? AccountPolicy { get; set; }

    /// <summary>Fetches from accounts' upstream binary caches.</summary>
    internal Upstream.UpstreamSubstituter Upstream { get; } = new();

    /// <summary>NAR content by hash (the agent reads inputs and writes outputs through it).</summary>
    public IBlobStore Blobs { get; }

    internal TempRoots TempRoots { get; }

    /// <summary>The NAR bytes accounts upload and download, written to the database every few seconds.</summary>
    public UsageMeter Usage { get; }

    /// <summary>Moves whenever a path record changes or goes (signatures added, paths deleted): caches of rendered records compare it.</summary>
    public long PathRecordsVersion => Metadata.PathRecordsVersion;

    internal KeptNarFiles KeptNarFiles { get; }

    /// <summary>Build logs, by build id (the scheduler writes them; views decide who reads them).</summary>
    public IBuildLogStore Logs { get; }

    /// <summary>Build records (the scheduler's port onto the metadata).</summary>
    public IBuildMetadata Builds => Metadata;

    /// <summary>Agent tokens and the agents' last known state.</summary>
    public IAgentMetadata Agents => Metadata;

    /// <summary>Where front doors on one database show each other their queues (<see cref="IBuildMetadata.SharedByFrontDoors"/>).</summary>
    public IQueueBoard Board => Metadata;

    /// <summary>The queue of pushes to accounts' own caches (<c>push-to</c>).</summary>
    public IPushMetadata Pushes => Metadata;

    internal GarbageCollector GarbageCollector { get; }

    /// <summary>
    /// Whether other front doors may be using this store while this process is (its metadata is a database several
    /// servers share): their uploads in flight are not this process's to know about.
    /// </summary>
    public bool SharedWithOtherFrontDoors => Metadata.SharesTempRoots;

    /// <summary>
    /// Collects every account's view, then sweeps every blob nothing names (older than <paramref name="blobGrace"/>)
    /// and what interrupted uploads left: <c>kiln store gc</c>, with the server stopped.
    /// </summary>
    public Task<(int Paths, long Bytes, long Blobs)> CollectAllGarbageAsync(TimeSpan? blobGrace, CancellationToken cancellationToken, TimeSpan? keepRecent = null) =>
        GarbageCollector.CollectAllAsync(blobGrace, cancellationToken, keepRecent);

    /// <summary>What a collection would take from each account's view now (nothing is deleted): account name, then its dead paths.</summary>
    public async Task<IReadOnlyList<(string Account, IReadOnlyList<StorePath> Paths)>> DeadPathsAsync(CancellationToken cancellationToken)
    {
        var dead = new List<(string, IReadOnlyList<StorePath>)>();
        foreach (var account in await Metadata.ListAccountsAsync(cancellationToken).ConfigureAwait(false))
        {
            var result = await GarbageCollector.CollectAsync(account.Id, new GcRequest(GcAction.ReturnDead, new HashSet<StorePath>(), 0), cancellationToken, retention: true).ConfigureAwait(false);
            dead.Add((account.Name, [.. result.Paths.Order()]));
        }

        return dead;
    }

    /// <summary>The whole store's size (every view's records, the distinct NARs they name): a scan, for gauges read now and then.</summary>
    public Task<StoreTotals> GetTotalsAsync(CancellationToken cancellationToken) => Metadata.GetTotalsAsync(cancellationToken);

    /// <summary>
    /// Deletes an account and all that is its (<see cref="IAccountMetadata.DeleteAccountAsync"/>), then the logs of
    /// the builds that went with it. Content other accounts hold stays; what only it held is collected with the next
    /// blob sweep. Returns the number of builds deleted and of their logs that could not be (a bucket that failed:
    /// no record names them any more), or null when there is no such account.
    /// </summary>
    /// <exception cref="Kiln.Protocol.KilnException">A build the account was for is running (Conflict): nothing was deleted.</exception>
    public async Task<(int Builds, int LogsLeft)?> DeleteAccountAsync(long account, CancellationToken cancellationToken)
    {
        var builds = await Metadata.DeleteAccountAsync(account, cancellationToken).ConfigureAwait(false);
        if (builds is null)
        {
            return null;
        }

        // Committed: every log goes now, whatever happens to one of them (the records that named them are gone, so
        // nothing could find them to try again).
        var left = 0;
        foreach (var build in builds)
        {
            try
            {
                await Logs.DeleteAsync(build, CancellationToken.None).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // counted and reported; the next log is deleted all the same
            catch (Exception)
#pragma warning restore CA1031
            {
                left++;
            }
        }

        return (builds.Count, left);
    }

    /// <summary>Records every account's storage as its sample for <paramref name="day"/> (Unix days; <see cref="StorageSample.DayOf"/>).</summary>
    public Task SampleStorageAsync(long day, CancellationToken cancellationToken) => Metadata.RecordStorageAsync(day, cancellationToken);

    /// <summary>
    /// Whether this front door sweeps the blobs nothing names now: not when another on the same database did less than
    /// <paramref name="every"/> ago (the sweep lists the whole bucket; once per interval between them is enough).
    /// </summary>
    public Task<bool> TakeBlobSweepTurnAsync(TimeSpan every, CancellationToken cancellationToken) =>
        Metadata.TakeTurnAsync("blob-sweep", (long)every.TotalSeconds, cancellationToken);

    /// <summary>The running server's sweep of blobs nothing names, older than the grace period (see <see cref="StoreOptions.BlobGracePeriod"/>).</summary>
    public Task<long> SweepUnnamedBlobsAsync(TimeSpan? grace, CancellationToken cancellationToken) =>
        GarbageCollector.SweepUnnamedBlobsAsync(grace ?? Options.BlobGracePeriod, cancellationToken);

    /// <summary>
    /// Deletes the kept NAR files and build logs in this data directory the metadata no longer names: with several
    /// front doors, the copies one fetched from the bucket after another's collector (or an account's deletion through
    /// another) removed the rest; and what a crash left unnamed. The running server does it with each blob sweep.
    /// </summary>
    public async Task<(int NarFiles, int Logs)> PruneLocalCopiesAsync(CancellationToken cancellationToken) =>
        (await KeptNarFiles.PruneAsync(Metadata.FindNarFilesAsync, Options.BlobGracePeriod, cancellationToken).ConfigureAwait(false),
         await _localLogs.PruneAsync(Metadata.FindBuildIdsAsync, cancellationToken).ConfigureAwait(false));

    internal GcLock GcLock => _gcLock;

    // Per account with a storage quota: held from the commit's quota check until its paths are registered, so this
    // process's concurrent uploads of one account cannot pass the quota together. (Never removed: one small object
    // per account that ever uploaded under a quota.)
    private readonly System.Collections.Concurrent.ConcurrentDictionary<long, SemaphoreSlim> _quotaLocks = new();

    internal SemaphoreSlim QuotaLock(long account) => _quotaLocks.GetOrAdd(account, _ => new SemaphoreSlim(1, 1));

    /// <summary>Opens (creating if needed) the embedded store: SQLite metadata and a blob directory under the data directory.</summary>
    public static async Task<KilnStore> OpenAsync(StoreOptions options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        Directory.CreateDirectory(options.DataDirectory);
        DataDirectoryModes.Apply(options);
        var metadata = MetadataStores.Open(options.EffectiveMetadataUrl);
        await metadata.MigrateAsync(cancellationToken).ConfigureAwait(false);
        return await CreateAsync(options, metadata, cancellationToken).ConfigureAwait(false);
    }

    private static async Task<KilnStore> CreateAsync(StoreOptions options, IMetadataStore metadata, CancellationToken cancellationToken)
    {
        var store = new KilnStore(options, metadata, await InstallationAsync(metadata, cancellationToken).ConfigureAwait(false));
        var shown = Kiln.Store.Metadata.Postgres.PostgresConnection.Redact(options.EffectiveMetadataUrl); // never the database's password
        StoreLog.Opened(options.Logger, options.DataDirectory, shown);
        if (options.MaterialisedAccount is { } account)
        {
            store._materialisedAccountId = await metadata.GetOrCreateAccountAsync(account, cancellationToken).ConfigureAwait(false);
        }

        return store;
    }

    /// <summary>
    /// Which installation this is (made once, kept with the service's secrets): what it puts in a shared bucket is named
    /// by it, so a bucket reused by another installation, or by this one after its database was reset (build ids
    /// counting from 1 again), never shows one build's log as another's.
    /// </summary>
    internal static Task<string> InstallationAsync(ISettingsMetadata metadata, CancellationToken cancellationToken) =>
        metadata.GetOrAddServerSecretAsync("installation", Guid.NewGuid().ToString("N"), cancellationToken);

    /// <summary>Opens a store over an existing metadata provider (the contract tests run it on each).</summary>
    public static async Task<KilnStore> OpenAsync(StoreOptions options, IMetadataStore metadata, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        await metadata.MigrateAsync(cancellationToken).ConfigureAwait(false);
        return await CreateAsync(options, metadata, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A caller acting for <paramref name="account"/> (created on first use), reading its view only.</summary>
    public async Task<Caller> CallerForAccountAsync(string account, KeyPermissions permissions, CancellationToken cancellationToken)
    {
        var id = await Metadata.GetOrCreateAccountAsync(account, cancellationToken).ConfigureAwait(false);
        return new Caller(id, account, permissions, [id]);
    }

    /// <summary>The server reading an account's view on its behalf (a push of its builds' outputs): its view only, read only.</summary>
    public static Caller ReaderFor(long account) => new(account, null, KeyPermissions.StoreRead, [account]);

    /// <summary>A login by an SSH key: its account, within the key's permissions.</summary>
    public static Caller CallerForSshKey(SshKeyRecord key)
    {
        ArgumentNullException.ThrowIfNull(key);
        return new Caller(key.AccountId, key.AccountName, key.Permissions, [key.AccountId]);
    }

    /// <summary>
    /// An HTTP request with a token: its account's view, within the token's permissions (a write-only token still
    /// reads its own view: Nix's uploader asks what is there first). Null for a token that is malformed, unknown,
    /// revoked, expired or grants nothing of the store — never an anonymous caller instead.
    /// </summary>
    public async Task<Caller?> CallerForTokenAsync(string token, CancellationToken cancellationToken) =>
        await FindValidTokenAsync(token, cancellationToken).ConfigureAwait(false) is { } record
        && (record.Permissions & (KeyPermissions.StoreRead | KeyPermissions.StoreWrite)) != 0
            ? CallerForToken(record)
            : null;

    /// <summary>The token with that secret if it is well formed, known, not revoked and not expired; null otherwise.</summary>
    public async Task<TokenRecord?> FindValidTokenAsync(string token, CancellationToken cancellationToken)
    {
        if (!AccessToken.LooksValid(token))
        {
            return null;
        }

        var record = await Metadata.FindTokenAsync(AccessToken.Hash(token), cancellationToken).ConfigureAwait(false);
        return record is not null && record.IsValidAt(DateTimeOffset.UtcNow.ToUnixTimeSeconds()) ? record : null;
    }

    /// <summary>A valid token's caller (<see cref="FindValidTokenAsync"/>): its account's view, within its permissions.</summary>
    public static Caller CallerForToken(TokenRecord token)
    {
        ArgumentNullException.ThrowIfNull(token);
        return new Caller(token.AccountId, token.AccountName, token.Permissions, [token.AccountId]);
    }

    private Caller? _anonymous;
    private long _anonymousUntil;

    /// <summary>A request without credentials: it reads the views of accounts made public (the list is re-read at most once a second).</summary>
    public async Task<Caller> AnonymousCallerAsync(CancellationToken cancellationToken)
    {
        var now = Environment.TickCount64;
        if (_anonymous is not { } known || now >= Volatile.Read(ref _anonymousUntil))
        {
            var accounts = await Metadata.GetPublicCacheAccountsAsync(cancellationToken).ConfigureAwait(false);
            known = new Caller(null, null, KeyPermissions.StoreRead, accounts);
            _anonymous = known;
            Volatile.Write(ref _anonymousUntil, now + 1000);
        }

        return known;
    }

    /// <summary>
    /// A view of the store for <paramref name="caller"/>. <paramref name="clientRoot"/> is where the client's file
    /// system root is from here, when the client is local: its GC root symlinks are resolved under it. Dispose the
    /// view when the session or request ends (it holds the session's temporary roots).
    /// </summary>
    public StoreView OpenView(Caller caller, string? clientRoot = null) => new(this, caller, clientRoot);

    /// <summary>A view acting for <paramref name="account"/> with every permission (the unix socket's, tests').</summary>
    public async Task<StoreView> OpenViewAsync(string account, CancellationToken cancellationToken, string? clientRoot = null) =>
        OpenView(await CallerForAccountAsync(account, KeyPermissions.All, cancellationToken).ConfigureAwait(false), clientRoot);

    /// <summary>
    /// Names this process's front door to the store: on a database several front doors share, its sessions' temporary
    /// roots are published there from now on, so the other front doors' collectors spare them.
    /// </summary>
    public Task ShareTempRootsAsync(string frontDoor, CancellationToken cancellationToken) => TempRoots.ShareAsync(frontDoor, cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await TempRoots.DisposeAsync().ConfigureAwait(false);
        await Usage.DisposeAsync().ConfigureAwait(false); // (before the database closes)
        Upstream.Dispose();
        (Blobs as IDisposable)?.Dispose();
        await _gcLock.StopLingeringAsync().ConfigureAwait(false); // (its database session closes next)
        await Metadata.DisposeAsync().ConfigureAwait(false);
        _gcLock.Dispose();
    }
}
