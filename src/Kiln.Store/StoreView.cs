using System.Text;
using Kiln.Nix;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Protocol.Worker;
using Kiln.Store.Blobs;
using Kiln.Store.Gc;
using Kiln.Store.Metadata;

namespace Kiln.Store;

/// <summary>
/// The store as one caller sees it (a session, an HTTP request): the paths in the views of the caller's readable
/// accounts (<see cref="Caller.Readable"/>, decided by <see cref="KilnStore"/>) and nothing else — knowing a store
/// path gives nothing. Writes go to the caller's own account. Uploads are verified completely (NAR hash and size, NAR
/// well-formed, content address and content hash, references present) before they are registered, and registered
/// atomically. Paths the session uploads or names with AddTempRoot are temporary roots until it ends.
/// </summary>
public sealed partial class StoreView : IWorkerStore, IDisposable
{
    private readonly KilnStore _store;
    private readonly TempRoots.SessionRoots? _tempRoots;

    private readonly string? _clientRoot;

    internal StoreView(KilnStore store, Caller caller, string? clientRoot)
    {
        _store = store;
        Caller = caller;
        _clientRoot = clientRoot;
        _tempRoots = caller.AccountId is { } owner ? store.TempRoots.Open(owner) : null;
    }

    public Caller Caller { get; }

    /// <summary>The account this view writes to.</summary>
    /// <exception cref="KilnException">The view is an anonymous reader's.</exception>
    public long AccountId => Caller.AccountId ?? throw new KilnException(ErrorKind.Forbidden, "this view is read-only: it acts for no account");

    public string AccountName => Caller.AccountName ?? throw new KilnException(ErrorKind.Forbidden, "this view is read-only: it acts for no account");

    private IReadOnlyList<long> Readable => Caller.Readable;

    private IMetadataStore Metadata => _store.Metadata;

    public void Dispose() => _tempRoots?.Dispose();

    // Makes paths temporary roots of this session (and, on a shared database, of the other front doors' collectors:
    // published before this returns, as Nix's AddTempRoot is in effect when it answers).
    // lockHeld: the caller holds the collection lock shared (registering), so it is not taken again.
    private Task HoldAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken, bool lockHeld = false) =>
        _tempRoots?.AddAsync(paths, lockHeld, cancellationToken) ?? Task.CompletedTask;

    /// <summary>
    /// The records of those <paramref name="paths"/> in the view: for each, a globally trusted record if a readable
    /// account has one, else the first readable account's (one query per readable account still needed; a session's
    /// view has one account).
    /// </summary>
    public async Task<IReadOnlyDictionary<StorePath, PathRecord>> GetRecordsAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(paths);
        if (Readable.Count == 1)
        {
            var records = await Metadata.GetPathsAsync(Readable[0], paths, cancellationToken).ConfigureAwait(false);
            if (Caller.AccountId == Readable[0] && _store.MaterialisedFor(Readable[0]) is { } tree
                && records.Values.Where(r => !tree.Contains(r.Info.Path)).Select(r => r.Info.Path).ToList() is { Count: > 0 } absent)
            {
                await UnpackAddedElsewhereAsync(tree, absent, cancellationToken).ConfigureAwait(false);
            }

            return records;
        }

        // Several accounts (the public caches, for an anonymous request): a globally trusted record wins over any
        // other, then the accounts' order. Otherwise a tenant who made their account public could shadow another
        // public cache's signed path with an unsigned upload under the same name: clients that require signatures
        // would be refused the path, and clients that do not would take her bytes.
        var found = new Dictionary<StorePath, PathRecord>();
        IReadOnlyCollection<StorePath> wanted = paths;
        foreach (var account in Readable)
        {
            if (wanted.Count == 0)
            {
                break;
            }

            foreach (var (path, record) in await Metadata.GetPathsAsync(account, wanted, cancellationToken).ConfigureAwait(false))
            {
                if (!found.TryGetValue(path, out var earlier) || (record.Trust.IsGlobal() && !earlier.Trust.IsGlobal()))
                {
                    found[path] = record;
                }
            }

            wanted = paths.Where(p => !found.TryGetValue(p, out var record) || !record.Trust.IsGlobal()).ToList();
        }

        return found;
    }

    /// <summary>
    /// Another front door on the same database may have put paths in the socket account's view: this front door's
    /// unpacked tree gets them when a lookup first finds them, before the client hears they are valid and reads them
    /// from the tree (a .drv it added, which the other front door's client had added first; a NAR it copies). Under the
    /// collection lock held shared, as every unpacking into the tree is, and looked up again under it: a collection
    /// here that deleted one of them meanwhile has already taken it from the tree, and it must not arrive after.
    /// </summary>
    private async Task UnpackAddedElsewhereAsync(MaterialisedView tree, IReadOnlyList<StorePath> absent, CancellationToken cancellationToken)
    {
        var shared = await _store.GcLock.SharedAsync(cancellationToken).ConfigureAwait(false);
        await using var _ = shared.ConfigureAwait(false);
        var still = await Metadata.GetPathsAsync(AccountId, absent, cancellationToken).ConfigureAwait(false);
        await tree.AddAsync(still.Values.Select(r => (r.Info.Path, r.Info.NarHash)), cancellationToken,
            (path, narHash) => StoreLog.BlobMissing(_store.Options.Logger, path.FullPath, narHash.ToNix32())).ConfigureAwait(false);
    }

    /// <summary>The record of the path with that hash part in the view, with the readable account it is of.</summary>
    public async Task<(long Account, PathRecord Record)?> FindReadableByHashPartAsync(string hashPart, CancellationToken cancellationToken) =>
        await Metadata.FindPathByHashPartAsync(Readable, hashPart, cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// Counts a read of <paramref name="path"/> (a binary-cache client's) as a use of the record of
    /// <paramref name="account"/>, one of the accounts this view reads (a public cache's, for an anonymous reader):
    /// its retention counts from now. Kept in memory, written in batches.
    /// </summary>
    public void MarkRead(long account, StorePath path)
    {
        if (Readable.Contains(account))
        {
            _store.Usage.Used(account, [path]);
        }
    }

    /// <summary>The record of the path with that hash part in the view (the first readable account's that has one).</summary>
    public async Task<PathRecord?> FindByHashPartAsync(string hashPart, CancellationToken cancellationToken) =>
        (await FindReadableByHashPartAsync(hashPart, cancellationToken).ConfigureAwait(false))?.Record;

    /// <summary>The blob of a NAR some path in the view has; null when none has it (or its blob is gone).</summary>
    public async Task<Blobs.BlobSource?> OpenNarByHashAsync(NixHash narHash, CancellationToken cancellationToken) =>
        await Metadata.FindNarAsync(Readable, narHash, cancellationToken).ConfigureAwait(false) is null
            ? null
            : await _store.Blobs.OpenReadAsync(narHash, cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// The blob of a NAR this view was shown a record of moments ago, without looking the record up again: for a
    /// caller that keeps what the view answered, and the rules it was answered by (the HTTP cache's narinfo answers,
    /// dropped when any path record changes or goes). Null when its blob is gone.
    /// </summary>
    public async Task<Blobs.BlobSource?> OpenShownNarAsync(NixHash narHash, CancellationToken cancellationToken) =>
        await _store.Blobs.OpenReadAsync(narHash, cancellationToken).ConfigureAwait(false);

    /// <summary>The short-lived URL of a NAR this view was shown a record of moments ago (as <see cref="OpenShownNarAsync"/>).</summary>
    public Uri? LinkShownNar(NixHash narHash, TimeSpan lifetime) => _store.Blobs.LinkFor(narHash, lifetime);

    /// <summary>
    /// A short-lived URL at which the caller may fetch a NAR straight from the blob store, when a path in the view has
    /// it and the store gives such URLs (<see cref="Blobs.IBlobStore.LinkFor"/>); null otherwise.
    /// </summary>
    public async Task<Uri?> LinkNarByHashAsync(NixHash narHash, TimeSpan lifetime, CancellationToken cancellationToken) =>
        await Metadata.FindNarAsync(Readable, narHash, cancellationToken).ConfigureAwait(false) is null ? null : _store.Blobs.LinkFor(narHash, lifetime);

    // Sets over every readable account.
    private async Task<IReadOnlySet<StorePath>> UnionAsync(Func<long, Task<IReadOnlySet<StorePath>>> query)
    {
        if (Readable.Count == 1)
        {
            return await query(Readable[0]).ConfigureAwait(false);
        }

        var all = new SortedSet<StorePath>();
        foreach (var account in Readable)
        {
            all.UnionWith(await query(account).ConfigureAwait(false));
        }

        return all;
    }

    public async Task<IReadOnlySet<StorePath>> QueryValidPathsAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        var records = await GetRecordsAsync(paths, cancellationToken).ConfigureAwait(false);
        return new SortedSet<StorePath>(records.Keys);
    }

    public async Task<IReadOnlyDictionary<StorePath, ValidPathInfo>> QueryPathInfosAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        var records = await GetRecordsAsync(paths, cancellationToken).ConfigureAwait(false);
        return records.ToDictionary(r => r.Key, r => r.Value.Info);
    }

    public async Task<StorePath?> QueryPathFromHashPartAsync(string hashPart, CancellationToken cancellationToken) =>
        (await FindByHashPartAsync(hashPart, cancellationToken).ConfigureAwait(false))?.Info.Path;

    public Task<IReadOnlySet<StorePath>> QueryReferrersAsync(StorePath path, CancellationToken cancellationToken) =>
        UnionAsync(account => Metadata.GetReferrersAsync(account, path, cancellationToken));

    public Task<IReadOnlySet<StorePath>> QueryValidDeriversAsync(StorePath path, CancellationToken cancellationToken) =>
        UnionAsync(account => Metadata.GetValidDeriversAsync(account, path, cancellationToken));

    // The outputs a derivation in the view declares (from the first readable account that has it), or null.
    private async Task<IReadOnlyDictionary<string, StorePath?>?> DerivationOutputsAsync(StorePath drvPath, CancellationToken cancellationToken)
    {
        foreach (var account in Readable)
        {
            if (await Metadata.GetDerivationOutputsAsync(account, drvPath, cancellationToken).ConfigureAwait(false) is { } outputs)
            {
                return outputs;
            }
        }

        return null;
    }

    public async Task<IReadOnlyDictionary<string, StorePath?>> QueryDerivationOutputMapAsync(StorePath drvPath, CancellationToken cancellationToken)
    {
        var outputs = await DerivationOutputsAsync(drvPath, cancellationToken).ConfigureAwait(false)
            ?? throw new KilnException(ErrorKind.NotFound, $"path '{drvPath}' is not valid");
        if (outputs.Count == 0)
        {
            throw new KilnException(ErrorKind.Invalid, $"'{drvPath}' is not a derivation Kiln could read");
        }

        return outputs;
    }

    public Task<IReadOnlySet<StorePath>> QueryAllValidPathsAsync(CancellationToken cancellationToken) =>
        UnionAsync(async account => new SortedSet<StorePath>(await Metadata.GetAllPathsAsync(account, cancellationToken).ConfigureAwait(false)));

    /// <summary>
    /// What realising <paramref name="targets"/> takes, as Nix's queryMissing says it: every derivation whose wanted
    /// outputs are not valid is to be built, and so, recursively, is every input derivation whose needed outputs are
    /// missing (clients print the whole list: "these 20 derivations will be built"), unless an upstream cache of the
    /// account has the missing outputs: those will be substituted (with their download and NAR sizes). Paths that are
    /// neither valid nor buildable are unknown. The graph is walked a level at a time with a constant number of
    /// metadata queries per level (not per derivation), and the upstream caches are asked about a level's outputs all
    /// at once; their warnings go to <paramref name="log"/>.
    /// </summary>
    public async Task<MissingPaths> QueryMissingAsync(IReadOnlyList<DerivedPath> targets, IClientLog log, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(log);
        var logGate = new Lock();
        void Warn(string message)
        {
            lock (logGate)
            {
                log.Log(message); // lookups run concurrently; the client's log is one stream
            }
        }

        var willBuild = new SortedSet<StorePath>();
        var willSubstitute = new SortedSet<StorePath>();
        long downloadSize = 0, narSize = 0;
        var unknown = new SortedSet<StorePath>();
        var opaque = targets.OfType<DerivedPath.Opaque>().Select(o => o.Path).Distinct().ToList();
        var validOpaque = await QueryValidPathsAsync(opaque, cancellationToken).ConfigureAwait(false);
        unknown.UnionWith(opaque.Where(p => !validOpaque.Contains(p)));

        // Level by level: (derivation, wanted outputs or null for all) whose outputs still have to be checked.
        var frontier = targets.OfType<DerivedPath.Built>().Select(b => (b.DrvPath, Wanted: b.Outputs)).ToList();
        while (frontier.Count > 0)
        {
            var drvs = frontier.Select(f => f.DrvPath).Where(d => !willBuild.Contains(d)).Distinct().ToList();
            var records = await GetRecordsAsync(drvs, cancellationToken).ConfigureAwait(false);
            var declared = await DerivationOutputsAsync(records.Keys.ToList(), cancellationToken).ConfigureAwait(false);

            // Each derivation's wanted outputs; an output without a known path must be built.
            var checks = new List<(StorePath Drv, IReadOnlyList<StorePath>? Outputs)>();
            foreach (var (drvPath, wanted) in frontier)
            {
                if (willBuild.Contains(drvPath))
                {
                    continue;
                }

                if (!records.ContainsKey(drvPath))
                {
                    unknown.Add(drvPath);
                    continue;
                }

                var outputs = declared.GetValueOrDefault(drvPath) ?? new Dictionary<string, StorePath?>();
                var requested = outputs.Where(o => wanted is null || wanted.Contains(o.Key)).ToList();
                checks.Add((drvPath, requested.Count == 0 || requested.Any(o => o.Value is null) ? null : requested.Select(o => o.Value!.Value).ToList()));
            }

            var valid = await QueryValidPathsAsync(checks.SelectMany(c => c.Outputs ?? []).Distinct().ToList(), cancellationToken).ConfigureAwait(false);
            var missing = checks
                .Select(c => (c.Drv, Missing: c.Outputs?.Where(o => !valid.Contains(o)).ToList()))
                .Where(c => c.Missing is null || c.Missing.Count > 0)
                .ToList();

            // Outputs an upstream cache has are fetched by Kiln, not built: their inputs are not needed.
            var substitutable = await Task.WhenAll(missing.Select(async c =>
                c.Missing is { Count: > 0 } paths ? await SubstitutableAsync(paths, Warn, cancellationToken).ConfigureAwait(false) : null)).ConfigureAwait(false);
            var toBuild = new List<StorePath>();
            foreach (var ((drvPath, paths), sizes) in missing.Zip(substitutable))
            {
                if (sizes is { } found)
                {
                    willSubstitute.UnionWith(paths!);
                    downloadSize += found.Download;
                    narSize += found.Nar;
                }
                else if (willBuild.Add(drvPath))
                {
                    toBuild.Add(drvPath);
                }
            }

            var next = new List<(StorePath, IReadOnlySet<string>?)>();
            var sources = new HashSet<StorePath>();
            foreach (var drvPath in toBuild)
            {
                var derivation = await ReadDerivationAsync(drvPath, records[drvPath], cancellationToken).ConfigureAwait(false);
                sources.UnionWith(derivation.InputSources);
                next.AddRange(derivation.InputDerivations.Select(i => (i.Key, (IReadOnlySet<string>?)i.Value)));
            }

            var validSources = await QueryValidPathsAsync(sources.ToList(), cancellationToken).ConfigureAwait(false);
            unknown.UnionWith(sources.Where(s => !validSources.Contains(s)));
            frontier = next;
        }

        return new MissingPaths(willBuild, willSubstitute, unknown, downloadSize, narSize);
    }

    // The outputs the derivations declare (from the first readable account that has each), batched per account.
    private async Task<IReadOnlyDictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>> DerivationOutputsAsync(IReadOnlyCollection<StorePath> drvPaths,
        CancellationToken cancellationToken)
    {
        var found = new Dictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>();
        foreach (var account in Readable)
        {
            var missing = drvPaths.Where(d => !found.ContainsKey(d)).ToList();
            if (missing.Count == 0)
            {
                break;
            }

            foreach (var (drv, outputs) in await Metadata.GetDerivationOutputsAsync(account, missing, cancellationToken).ConfigureAwait(false))
            {
                found[drv] = outputs;
            }
        }

        return found;
    }

    public async Task<NarBlob?> OpenNarAsync(StorePath path, CancellationToken cancellationToken)
    {
        var records = await GetRecordsAsync([path], cancellationToken).ConfigureAwait(false);
        if (!records.TryGetValue(path, out var record))
        {
            return null;
        }

        var source = await _store.Blobs.OpenReadAsync(record.Info.NarHash, cancellationToken).ConfigureAwait(false);
        if (source is null)
        {
            StoreLog.BlobMissing(_store.Options.Logger, path.FullPath, record.Info.NarHash.ToNix32());
            throw new KilnException(ErrorKind.Failed, $"the contents of '{path}' are missing from Kiln's store; an operator should run 'kiln store verify'");
        }

        // (Only the sessions' NarFromPath and nix-store --serve's dumps open NARs through a view: a client downloads it.)
        CountDownload(record.Info.NarSize);
        MarkUsed([path]);

        return new NarBlob(await source.OpenStreamAsync(cancellationToken).ConfigureAwait(false), record.Info.NarSize, record.Info.NarHash);
    }

    /// <summary>Marks paths of the caller's account used now (a build's inputs, outputs given again): its retention counts from here.</summary>
    public void MarkUsed(IEnumerable<StorePath> paths)
    {
        if (Caller.AccountId is { } account)
        {
            _store.Usage.Used(account, paths);
        }
    }

    /// <summary>Counts NAR bytes sent to the caller's account (an anonymous reader's are not counted).</summary>
    public void CountDownload(long bytes)
    {
        if (Caller.AccountId is { } account)
        {
            _store.Usage.Add(account, uploaded: 0, downloaded: bytes);
        }
    }

    /// <summary>The caller's own account's NAR bytes uploaded and downloaded per day, <paramref name="fromDay"/> to before <paramref name="toDay"/>, this process's latest counts included.</summary>
    public async Task<IReadOnlyList<TransferSample>> TransfersAsync(long fromDay, long toDay, CancellationToken cancellationToken)
    {
        var written = await Metadata.GetTransfersAsync(AccountId, fromDay, toDay, cancellationToken).ConfigureAwait(false);
        return [.. written.Concat(_store.Usage.Pending(AccountId).Where(p => p.Day >= fromDay && p.Day < toDay))
            .GroupBy(t => t.Day).OrderBy(g => g.Key)
            .Select(g => new TransferSample(AccountId, g.Key, g.Sum(t => t.Uploaded), g.Sum(t => t.Downloaded)))];
    }

    public Task AddTempRootAsync(StorePath path, CancellationToken cancellationToken) => HoldAsync([path], cancellationToken);

    /// <summary>Makes paths temporary roots of this session (a build's inputs, while it runs).</summary>
    public Task AddTempRootsAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken) => HoldAsync(paths, cancellationToken);

    public async Task AddIndirectRootAsync(string link, CancellationToken cancellationToken)
    {
        // Nix records the link and reads it at collection time. Kiln can only follow links it can see: a local
        // client's, under that client's root (it may be in a chroot). A remote client's link is on another machine
        // and would be stale at once, as it would be for Nix's own daemon.
        if (_clientRoot is null || !link.StartsWith('/'))
        {
            return;
        }

        var hostLink = _clientRoot == "/" ? link : _clientRoot.TrimEnd('/') + link;
        string? target;
        try
        {
            target = new FileInfo(hostLink).LinkTarget;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return; // not a link Kiln can read: nothing to record, as for Nix
        }

        // The store's own failures are not swallowed: a client told its root was added must have it.
        if (target is not null && StorePath.TryParse(target, out var path) &&
            (await QueryValidPathsAsync([path], cancellationToken).ConfigureAwait(false)).Contains(path))
        {
            await Metadata.AddRootAsync(AccountId, RootKind.Indirect, hostLink, path, cancellationToken).ConfigureAwait(false);
        }
    }

    public async Task<string> AddPermRootAsync(StorePath path, string rootName, CancellationToken cancellationToken)
    {
        await RequireValidAsync(path, cancellationToken).ConfigureAwait(false);
        if (string.IsNullOrEmpty(rootName) || rootName.Length > 4096)
        {
            throw new KilnException(ErrorKind.Invalid, "a garbage collector root needs a name of at most 4096 characters");
        }

        await Metadata.AddRootAsync(AccountId, RootKind.Permanent, rootName, path, cancellationToken).ConfigureAwait(false);
        return rootName;
    }

    /// <summary>Pins <paramref name="path"/> in the account's store (<see cref="Pins.AddAsync"/>).</summary>
    public async Task<PinRecord> PinAsync(StorePath path, string? name, CancellationToken cancellationToken)
    {
        // Held by this session first, as Nix does: a collection between the check and the pin cannot take the path.
        await HoldAsync([path], cancellationToken).ConfigureAwait(false);
        return await Pins.AddAsync(Metadata, AccountId, path, name, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The account's pins, by name.</summary>
    public Task<IReadOnlyList<PinRecord>> PinsAsync(CancellationToken cancellationToken) => Pins.ListAsync(Metadata, AccountId, cancellationToken);

    /// <summary>Removes the account's pin named <paramref name="name"/> (<see cref="Pins.RemoveAsync"/>).</summary>
    public Task<PinRecord> UnpinAsync(string name, CancellationToken cancellationToken) => Pins.RemoveAsync(Metadata, AccountId, name, cancellationToken);

    public Task<IReadOnlyList<KeyValuePair<string, StorePath>>> FindRootsAsync(CancellationToken cancellationToken) =>
        _store.GarbageCollector.RootsAsync(AccountId, cancellationToken);

    public Task<GcResult> CollectGarbageAsync(GcRequest request, CancellationToken cancellationToken) =>
        _store.GarbageCollector.CollectAsync(AccountId, request, cancellationToken);

    public async Task AddSignaturesAsync(StorePath path, IReadOnlySet<string> signatures, CancellationToken cancellationToken)
    {
        await RequireValidAsync(path, cancellationToken).ConfigureAwait(false);
        foreach (var signature in signatures)
        {
            var colon = signature.IndexOf(':', StringComparison.Ordinal);
            if (colon <= 0 || !NixBase64.TryDecode(signature.AsSpan(colon + 1), out var bytes) || bytes.Length != 64)
            {
                throw new KilnException(ErrorKind.Invalid, $"'{signature}' is not a signature (expected name:base64 of 64 bytes)");
            }
        }

        await Metadata.AddSignaturesAsync(AccountId, path, signatures.ToList(), cancellationToken).ConfigureAwait(false);
    }

    public async Task<bool> VerifyStoreAsync(bool checkContents, bool repair, IClientLog log, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(log);
        if (repair)
        {
            throw new KilnException(ErrorKind.Invalid, "Kiln cannot repair paths: it has no substituters to fetch them from yet");
        }

        var paths = await Metadata.GetAllPathsAsync(AccountId, cancellationToken).ConfigureAwait(false);
        var errors = false;
        var checkedHashes = new Dictionary<NixHash, (NixHash? Actual, string? Damage)>();
        foreach (var batch in paths.Chunk(1000))
        {
            var records = await Metadata.GetPathsAsync(AccountId, batch, cancellationToken).ConfigureAwait(false);
            foreach (var (path, record) in records.OrderBy(r => r.Key))
            {
                if (!checkContents)
                {
                    if (!await _store.Blobs.HasAsync(record.Info.NarHash, cancellationToken).ConfigureAwait(false))
                    {
                        log.Log($"path '{path}' disappeared, but it still has valid referrers!");
                        errors = true;
                    }

                    continue;
                }

                if (!checkedHashes.TryGetValue(record.Info.NarHash, out var check))
                {
                    check = await CheckBlobAsync(_store.Blobs, record.Info.NarHash, cancellationToken).ConfigureAwait(false);
                    checkedHashes[record.Info.NarHash] = check;
                }

                var actual = check.Actual;
                if (check.Damage is not null)
                {
                    // Not the storage's own words (they may say where blobs are kept): the client is told what it means.
                    log.Log($"path '{path}' was modified! its stored copy cannot be read whole");
                    errors = true;
                    continue;
                }

                if (actual is null)
                {
                    log.Log($"path '{path}' disappeared, but it still has valid referrers!");
                    errors = true;
                    continue;
                }

                if (actual != record.Info.NarHash)
                {
                    log.Log($"path '{path}' was modified! expected hash '{record.Info.NarHash}', got '{actual}'");
                    errors = true;
                }
            }
        }

        return errors;
    }

    /// <summary>
    /// What verification reads of a blob: the SHA-256 of the copy the blob store keeps (null when it keeps none), or,
    /// when that copy is damaged past reading whole, why (<see cref="BlobDamagedException"/>'s message).
    /// </summary>
    internal static async Task<(NixHash? Actual, string? Damage)> CheckBlobAsync(IBlobStore blobs, NixHash hash, CancellationToken cancellationToken)
    {
        try
        {
            return (await blobs.HashStoredAsync(hash, cancellationToken).ConfigureAwait(false), null);
        }
        catch (BlobDamagedException e)
        {
            return (null, e.Message);
        }
    }

    public async Task EnsurePathAsync(StorePath path, CancellationToken cancellationToken)
    {
        var valid = await SubstituteAsync([path], cancellationToken).ConfigureAwait(false);
        if (!valid.Contains(path))
        {
            throw new KilnException(ErrorKind.NotFound, $"path '{path}' does not exist and cannot be created");
        }
    }

    private async Task RequireValidAsync(StorePath path, CancellationToken cancellationToken)
    {
        var valid = await QueryValidPathsAsync([path], cancellationToken).ConfigureAwait(false);
        if (!valid.Contains(path))
        {
            throw new KilnException(ErrorKind.NotFound, $"path '{path}' is not valid");
        }
    }

    /// <summary>The outputs a .drv declares, read from its contents; null when they do not parse.</summary>
    internal static IReadOnlyDictionary<string, StorePath?>? DerivationOutputs(StorePath drvPath, byte[]? contents)
    {
        if (!drvPath.IsDerivation || contents is null)
        {
            return null;
        }

        try
        {
            var derivation = ATerm.Parse(contents, Derivation.NameFromPath(drvPath));
            return derivation.Outputs.ToDictionary(
                o => o.Key,
                o => o.Value.Path.Length == 0 ? (StorePath?)null : StorePath.Parse(o.Value.Path),
                StringComparer.Ordinal);
        }
        catch (NixFormatException)
        {
            return null;
        }
    }

    internal static string Describe(NixHash hash) => hash.ToString(HashFormat.Nix32, true);

    internal static string Utf8(byte[] bytes) => Encoding.UTF8.GetString(bytes);
}
