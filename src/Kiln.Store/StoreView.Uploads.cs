using System.Buffers;
using Kiln.Nix;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Protocol.Worker;
using Kiln.Store.Blobs;
using Kiln.Store.Metadata;

namespace Kiln.Store;

// Adding paths: declared uploads (AddToStoreNar, AddMultipleToStore) and content-addressed adds (AddToStore,
// AddTextToStore), whose path the server computes.
public sealed partial class StoreView
{
    public async Task AddToStoreAsync(ValidPathInfo info, Stream nar, bool repair, bool checkSignatures, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(info);
        // Held before it is looked at (as Nix's AddTempRoot, then the check): a collection between the two must not
        // take a path this session has just been told is there.
        await HoldAsync([info.Path], cancellationToken).ConfigureAwait(false);
        if (!repair && (await QueryValidPathsAsync([info.Path], cancellationToken).ConfigureAwait(false)).Contains(info.Path))
        {
            return; // already valid: the caller drains the NAR
        }

        // (Asked before the NAR is read too, so a client over quota is told at once; the caller drains the NAR.)
        await CheckStorageQuotaAsync(info.NarSize, cancellationToken).ConfigureAwait(false);
        var upload = await IngestDeclaredAsync(info, nar, cancellationToken).ConfigureAwait(false);
        await using (upload.Nar.ConfigureAwait(false))
        {
            await CommitAsync([upload], cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Refuses uploads of <paramref name="incoming"/> NAR bytes that would take the account past its storage quota
    /// (<see cref="KilnStore.AccountPolicy"/>). The quota and what the account stores are read at most every few
    /// seconds per view (a copy of 300 paths asks once, not 300 times) and counted forward by this view's own
    /// commits: this early look tells a client over quota at once. The commit looks again
    /// (<see cref="HoldStorageQuotaAsync"/>), against what is stored then.
    /// </summary>
    private async Task CheckStorageQuotaAsync(long incoming, CancellationToken cancellationToken, bool reread = false)
    {
        if (incoming <= 0 || _store.AccountPolicy is not { } quota)
        {
            return;
        }

        var now = Environment.TickCount64;
        long max, used;
        bool fresh;
        lock (_quotaGate)
        {
            (fresh, max, used) = (!reread && _quotaReadAt is { } at && now - at < QuotaReadInterval, _quotaMax, _quotaUsed);
        }

        if (!fresh)
        {
            max = await quota.MaxStorageAsync(AccountId, cancellationToken).ConfigureAwait(false);
            used = max > 0 ? (await Metadata.GetStorageAsync(AccountId, cancellationToken).ConfigureAwait(false)).NarBytes : 0;
            lock (_quotaGate)
            {
                (_quotaReadAt, _quotaMax, _quotaUsed) = (now, max, used);
            }
        }

        if (max > 0 && used + incoming > max)
        {
            throw new KilnException(ErrorKind.TooLarge,
                $"kiln: storage quota exceeded: {Units.Bytes(used + incoming)} of {Units.Bytes(max)} with this upload ({Units.Bytes(used)} stored); delete paths or ask for more");
        }
    }

    /// <summary>
    /// The commit's look at the storage quota, where the account has one: under the account's quota lock (held until
    /// the returned handle is disposed, after the paths are registered), against what is stored now, so concurrent
    /// uploads of one account never pass the quota together — through this process (its lock per account) or through
    /// several front doors on one database (the database's lock per account, taken after this process's).
    /// </summary>
    private async Task<IAsyncDisposable?> HoldStorageQuotaAsync(long incoming, CancellationToken cancellationToken)
    {
        // The view's look first (the quota read at most every few seconds: an account without one pays no query here).
        await CheckStorageQuotaAsync(incoming, cancellationToken).ConfigureAwait(false);
        lock (_quotaGate)
        {
            if (incoming <= 0 || _store.AccountPolicy is null || _quotaMax <= 0)
            {
                return null;
            }
        }

        var gate = _store.QuotaLock(AccountId);
        await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        IAsyncDisposable? across = null;
        try
        {
            across = await Metadata.HoldStorageQuotaAsync(AccountId, cancellationToken).ConfigureAwait(false);
            await CheckStorageQuotaAsync(incoming, cancellationToken, reread: true).ConfigureAwait(false);
            return new Released(gate, across);
        }
        catch
        {
            await new Released(gate, across).DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    // The database's lock first, then this process's: the order they were taken in, reversed.
    private sealed class Released(SemaphoreSlim gate, IAsyncDisposable? across) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            try
            {
                if (across is not null)
                {
                    await across.DisposeAsync().ConfigureAwait(false);
                }
            }
            finally
            {
                gate.Release();
            }
        }
    }

    private const long QuotaReadInterval = 5_000; // ms
    private readonly Lock _quotaGate = new();
    private long? _quotaReadAt;
    private long _quotaMax;
    private long _quotaUsed;

    /// <summary>
    /// A path an upstream cache served, signed by a key the account trusts: verified like any upload (NAR hash and
    /// size, content address, references valid in the view), registered as substituted, trusted as far as its
    /// signatures go (<paramref name="trust"/>: globally by an operator's key, or by this account's own).
    /// </summary>
    internal async Task AddSubstitutedAsync(ValidPathInfo info, Stream nar, PathTrust trust, CancellationToken cancellationToken)
    {
        // A content-addressed path is globally trusted whoever signed it: its name follows from its checked content.
        var upload = await IngestDeclaredAsync(info, nar, cancellationToken, info.ContentAddress is null ? trust : PathTrust.ContentAddressed).ConfigureAwait(false);
        await using (upload.Nar.ConfigureAwait(false))
        {
            await CommitAsync([upload], cancellationToken, Provenance.Substituted).ConfigureAwait(false);
        }
    }

    public IUploadBatch BeginUploads(bool repair, bool checkSignatures) => new UploadBatch(this);

    public async Task<ValidPathInfo> AddContentAddressedAsync(string name, ContentAddressMethodAndAlgorithm method, Stream data,
        IReadOnlySet<StorePath> references, bool repair, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(references);
        try
        {
            StorePath.ValidateName(name, name);
        }
        catch (BadStorePathException e)
        {
            throw new KilnException(ErrorKind.Invalid, $"invalid store path name '{name}': {e.Message}");
        }

        if (method.Method == ContentAddressMethod.Git)
        {
            throw new KilnException(ErrorKind.Invalid, "git content addresses are not supported by Kiln");
        }

        if (method.Method == ContentAddressMethod.Text && method.Algorithm != NixHashAlgorithm.Sha256)
        {
            throw new KilnException(ErrorKind.Invalid, "text content addresses are always sha256");
        }

        // Evaluation re-adds every .drv and source on each run: when the payload is small, its path follows from
        // its bytes alone, so an add that changes nothing is answered before anything touches the disk (as Nix's
        // daemon does, which reads the whole payload into memory first).
        var buffer = ArrayPool<byte>.Shared.Rent(SmallAddSize + 1);
        try
        {
            var filled = await data.ReadAtLeastAsync(buffer.AsMemory(0, SmallAddSize + 1), SmallAddSize + 1, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
            var complete = filled <= SmallAddSize;
            if (complete && !repair)
            {
                var known = await FindContentAddressedAsync(name, method, buffer.AsMemory(0, filled), references, cancellationToken).ConfigureAwait(false);
                if (known is not null)
                {
                    return known;
                }
            }

            Stream payload = complete ? new MemoryStream(buffer, 0, filled, writable: false) : new PrefixedStream(buffer.AsMemory(0, filled), data);
            return await IngestContentAddressedAsync(name, method, payload, references, repair, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private async Task<ValidPathInfo> IngestContentAddressedAsync(string name, ContentAddressMethodAndAlgorithm method, Stream data,
        IReadOnlySet<StorePath> references, bool repair, CancellationToken cancellationToken)
    {
        var captureUpTo = name.EndsWith(".drv", StringComparison.Ordinal) ? ATerm.MaxSize : 0;
        var unpackTo = _store.MaterialisedFor(AccountId)?.NewTemporaryPath();
        var ingested = method.Method == ContentAddressMethod.Recursive
            ? await NarIngest.IngestAsync(_store.Blobs, data, method, captureUpTo, _store.Options.MaxNarSize, cancellationToken, unpackTo).ConfigureAwait(false)
            : await NarIngest.IngestFlatAsync(_store.Blobs, _store.Options.TemporaryDirectory, data, method.Algorithm, captureUpTo, _store.Options.MaxNarSize,
                cancellationToken, unpackTo).ConfigureAwait(false);
        await using (ingested.ConfigureAwait(false))
        {
            var ca = new ContentAddress(method.Method, ingested.ContentHash!.Value);
            StorePath path;
            try
            {
                path = ContentAddressedPath(name, ca, references);
            }
            catch (NixFormatException e)
            {
                throw new KilnException(ErrorKind.Invalid, e.Message);
            }

            var info = new ValidPathInfo
            {
                Path = path,
                NarHash = ingested.NarHash,
                NarSize = ingested.NarSize,
                References = new SortedSet<StorePath>(references),
                RegistrationTime = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
                ContentAddress = ca,
            };
            if (!repair)
            {
                await HoldAsync([path], cancellationToken).ConfigureAwait(false); // (before the look, as above)
                var existing = await QueryPathInfosAsync([path], cancellationToken).ConfigureAwait(false);
                if (existing.TryGetValue(path, out var known))
                {
                    return known;
                }
            }

            var upload = new Upload(info, ingested, PathTrust.ContentAddressed, DerivationOutputs(path, ingested.FileContents));
            await CommitAsync([upload], cancellationToken).ConfigureAwait(false);
            return info;
        }
    }

    /// <summary>Payloads up to this size are read into memory first, to answer an add of a known path at once.</summary>
    private const int SmallAddSize = (4 << 20) - 1; // plus the one byte that shows there is more: one 4 MiB pooled buffer

    // The path a whole payload would get, if this view already has it. Only a path already registered is returned,
    // so a malformed payload (say, not a NAR) is never accepted here: it is ingested, and refused, as usual.
    private async Task<ValidPathInfo?> FindContentAddressedAsync(string name, ContentAddressMethodAndAlgorithm method, ReadOnlyMemory<byte> payload,
        IReadOnlySet<StorePath> references, CancellationToken cancellationToken)
    {
        StorePath path;
        try
        {
            path = ContentAddressedPath(name, new ContentAddress(method.Method, NixHash.Compute(method.Algorithm, payload.Span)), references);
        }
        catch (NixFormatException)
        {
            return null; // the slow path reports it
        }

        // Held before the look, as Nix does: a collection between a look that found it and a hold after it could take
        // the path the client is then told is valid. (One the look does not find is added next, and held anyway.)
        await HoldAsync([path], cancellationToken).ConfigureAwait(false);
        var existing = await QueryPathInfosAsync([path], cancellationToken).ConfigureAwait(false);
        return existing.GetValueOrDefault(path);
    }

    private static StorePath ContentAddressedPath(string name, ContentAddress ca, IReadOnlySet<StorePath> references) =>
        ca.Method == ContentAddressMethod.Text
            ? StorePathComputer.MakeTextPath(name, ca.Hash, references)
            : StorePathComputer.MakeFixedOutputPath(name, ca, references);

    /// <summary>Bytes already read from a stream, then the rest of it.</summary>
    private sealed class PrefixedStream(ReadOnlyMemory<byte> prefix, Stream rest) : ReadOnlyStream
    {
        private int _offset;

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (_offset < prefix.Length)
            {
                var n = Math.Min(buffer.Length, prefix.Length - _offset);
                prefix.Span.Slice(_offset, n).CopyTo(buffer);
                _offset += n;
                return n;
            }

            return rest.Read(buffer);
        }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (_offset < prefix.Length)
            {
                return ValueTask.FromResult(Read(buffer.Span));
            }

            return rest.ReadAsync(buffer, cancellationToken);
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }

    /// <summary>An upload that has been streamed to a temporary blob and verified, waiting to be registered.</summary>
    private sealed record Upload(ValidPathInfo Info, IngestedNar Nar, PathTrust Trust, IReadOnlyDictionary<string, StorePath?>? Outputs);

    // Streams a declared upload to a temporary blob and checks it against what the client declared.
    private async Task<Upload> IngestDeclaredAsync(ValidPathInfo info, Stream nar, CancellationToken cancellationToken, PathTrust? trustAs = null)
    {
        if (info.NarHash.Algorithm != NixHashAlgorithm.Sha256)
        {
            throw new KilnException(ErrorKind.Invalid, $"cannot add '{info.Path}': its NAR hash must be SHA-256");
        }

        ContentAddressMethodAndAlgorithm? contentMethod = null;
        if (info.ContentAddress is { } ca)
        {
            if (!info.PathMatchesContentAddress())
            {
                throw new KilnException(ErrorKind.Invalid, $"path '{info.Path}' claims to be content-addressed as '{ca}', but its name does not follow from that");
            }

            contentMethod = ca.MethodAndAlgorithm;
        }

        var captureUpTo = info.Path.IsDerivation ? ATerm.MaxSize : 0;
        var unpackTo = _store.MaterialisedFor(AccountId)?.NewTemporaryPath();
        // Read no further than the size the uploader declared (a decompression bomb behind a small narinfo stops there,
        // not at the store's largest NAR).
        var declared = info.NarSize > 0 && info.NarSize < _store.Options.MaxNarSize;
        IngestedNar ingested;
        try
        {
            ingested = await NarIngest.IngestAsync(_store.Blobs, nar, contentMethod, captureUpTo, declared ? info.NarSize : _store.Options.MaxNarSize, cancellationToken, unpackTo).ConfigureAwait(false);
        }
        catch (KilnException e) when (declared && e.Kind == ErrorKind.TooLarge)
        {
            throw new KilnException(ErrorKind.Invalid, $"size mismatch importing path '{info.Path}';\n  specified: {info.NarSize}\n  got:       more than that", e);
        }

        var handedOver = false;
        try
        {
            if (ingested.NarSize != info.NarSize)
            {
                throw new KilnException(ErrorKind.Invalid, $"size mismatch importing path '{info.Path}';\n  specified: {info.NarSize}\n  got:       {ingested.NarSize}");
            }

            if (ingested.NarHash != info.NarHash)
            {
                throw new KilnException(ErrorKind.Invalid, $"hash mismatch importing path '{info.Path}';\n  specified: {Describe(info.NarHash)}\n  got:       {Describe(ingested.NarHash)}");
            }

            if (info.ContentAddress is { } address && ingested.ContentHash != address.Hash)
            {
                throw new KilnException(ErrorKind.Invalid, $"ca hash mismatch importing path '{info.Path}';\n  specified: {Describe(address.Hash)}\n  got:       {Describe(ingested.ContentHash!.Value)}");
            }

            var trust = trustAs ?? (info.ContentAddress is null ? PathTrust.Untrusted : PathTrust.ContentAddressed);
            var stored = info with { Ultimate = false, RegistrationTime = DateTimeOffset.UtcNow.ToUnixTimeSeconds() };
            handedOver = true;
            return new Upload(stored, ingested, trust, DerivationOutputs(info.Path, ingested.FileContents));
        }
        finally
        {
            if (!handedOver)
            {
                await ingested.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    // Moves verified blobs into place and registers their paths, all in one transaction, with the collector held off.
    // shippedIn: the shared hold of the collection lock (GcLock.SharedPeriod) in force when each blob's ship began, if any.
    private async Task CommitAsync(IReadOnlyList<Upload> uploads, CancellationToken cancellationToken, Provenance provenance = Provenance.Uploaded,
        Func<Upload, long?>? shippedIn = null)
    {
        var ordered = TopologicalOrder(uploads);
        var shared = await _store.GcLock.SharedAsync(cancellationToken).ConfigureAwait(false);
        await using var _ = shared.ConfigureAwait(false);
        // A blob shipped within this very hold of the lock cannot have been swept since: the commit need not look.
        var period = _store.GcLock.SharedPeriod;
        // The blobs are independent, so several go at once: into a bucket each is at least an upload, and a batch of a
        // few hundred small NARs one after another would wait on hundreds of round trips.
        await Parallel.ForEachAsync(ordered, new ParallelOptions { MaxDegreeOfParallelism = 8, CancellationToken = cancellationToken },
            async (upload, token) => await upload.Nar.CommitAsync(period is not null && shippedIn?.Invoke(upload) == period, token).ConfigureAwait(false))
            .ConfigureAwait(false);

        // The quota, checked against what is registered now (another session or front door may have added since the
        // first look) and held until these paths are: after the uploads, so the account's lock (in the database too,
        // with several front doors) is held for a query and a registration, never for an upload. A refusal here, which
        // only a race with another commit of the account brings, leaves the blobs to the sweep of unnamed ones.
        await using var quotaHeld = provenance == Provenance.Uploaded ? await HoldStorageQuotaAsync(uploads.Sum(u => u.Info.NarSize), cancellationToken).ConfigureAwait(false) : null;
        try
        {
            await Metadata.RegisterAsync(AccountId,
                ordered.Select(u => new NewPath(u.Info, provenance, u.Trust, u.Outputs)).ToList(), cancellationToken).ConfigureAwait(false);
            var added = ordered.Sum(u => u.Info.NarSize);
            lock (_quotaGate)
            {
                _quotaUsed += added;
            }

            if (provenance == Provenance.Uploaded)
            {
                _store.Usage.Add(AccountId, uploaded: added, downloaded: 0);
            }
        }
        catch (MissingReferencesException e)
        {
            // The blobs stay until the collector finds that nothing names them.
            throw new KilnException(ErrorKind.Invalid, e.Message);
        }

        await HoldAsync(ordered.Select(u => u.Info.Path).ToList(), cancellationToken, lockHeld: true).ConfigureAwait(false);

        // Before the client hears "done": it may read the path from disk next. Trees unpacked while the NARs
        // streamed in are renamed into place; anything else is unpacked from its blob.
        if (_store.MaterialisedFor(AccountId) is { } tree)
        {
            foreach (var upload in ordered.Where(u => u.Nar.TreePath is not null))
            {
                tree.Adopt(upload.Nar.TreePath!, upload.Info.Path);
            }

            await tree.AddAsync(ordered.Where(u => u.Nar.TreePath is null).Select(u => (u.Info.Path, u.Info.NarHash)), cancellationToken).ConfigureAwait(false);
        }
    }

    // References first, so each path's references are registered before it.
    private static List<Upload> TopologicalOrder(IReadOnlyList<Upload> uploads)
    {
        var byPath = new Dictionary<StorePath, Upload>();
        foreach (var upload in uploads)
        {
            byPath.TryAdd(upload.Info.Path, upload);
        }

        return Graph.Order(byPath.Keys, p => byPath[p].Info.OtherReferences, byPath.Keys.ToHashSet())
            .Select(p => byPath[p]).ToList();
    }

    /// <summary>
    /// AddMultipleToStore: every upload verified as it arrives, all registered together at the end. Each verified blob
    /// is shipped (into a bucket, an upload) while the next ones are still being received, a few at once, so the
    /// commit is left with checking them; a batch that is never committed deletes what it shipped, unless a path
    /// names it by then.
    /// </summary>
    private sealed class UploadBatch(StoreView view) : IUploadBatch
    {
        // Blobs shipped at once: enough to keep a bucket busy while the client sends, few enough that a batch of
        // hundreds never opens hundreds of uploads.
        private const int ShippedAtOnce = 4;

        private readonly List<Upload> _uploads = [];
        private readonly HashSet<StorePath> _seen = [];
        private readonly List<Task<Shipment>> _shipping = [];
        private readonly SemaphoreSlim _shipSlots = new(ShippedAtOnce);
        // Cancelled by the commit: ships still waiting for a slot are left to it (it uploads more at once).
        private readonly CancellationTokenSource _committing = new();
        // Cancelled when the batch is abandoned: every ship stops.
        private readonly CancellationTokenSource _abandon = new();
        private long _bytes;
        private bool _committed;
        private bool _commitBegun; // (and not _committed: it failed, perhaps after storing some blobs)
        private bool _disposed;

        private readonly record struct Shipment(bool Stored, long? Period);

        public async Task AddAsync(ValidPathInfo info, Stream nar, CancellationToken cancellationToken)
        {
            await view.HoldAsync([info.Path], cancellationToken).ConfigureAwait(false); // (before the look, as above)
            if (!_seen.Add(info.Path) || (await view.QueryValidPathsAsync([info.Path], cancellationToken).ConfigureAwait(false)).Contains(info.Path))
            {
                return; // already there: the caller drains the NAR
            }

            // Refused as soon as the batch would pass the quota, not after the rest of it has been received.
            _bytes += info.NarSize;
            await view.CheckStorageQuotaAsync(_bytes, cancellationToken).ConfigureAwait(false);
            var upload = await view.IngestDeclaredAsync(info, nar, cancellationToken).ConfigureAwait(false);
            _uploads.Add(upload);
            _shipping.Add(ShipAsync(upload.Nar));
        }

        // Whether the blob was stored ahead of its commit (into a bucket; a directory stores nothing before it), and in
        // which hold of the collection lock, if any, the upload began. Never fails: a blob that was not stored is stored by
        // the commit, which reports what goes wrong then.
        private async Task<Shipment> ShipAsync(IngestedNar nar)
        {
            await Task.Yield(); // the session goes on to the next NAR at once (signing a body hashes all of it)
            try
            {
                using var either = CancellationTokenSource.CreateLinkedTokenSource(_committing.Token, _abandon.Token);
                await _shipSlots.WaitAsync(either.Token).ConfigureAwait(false);
                try
                {
                    // Usually the lock is held still (this batch's last look at a path took it, and it lingers while the
                    // client keeps sending); if it stays held until the commit, nothing can have deleted the blob.
                    var period = view._store.GcLock.SharedPeriod;
                    return new Shipment(await nar.ShipAsync(_abandon.Token).ConfigureAwait(false), period);
                }
                finally
                {
                    _shipSlots.Release();
                }
            }
#pragma warning disable CA1031 // the commit does the work again and reports
            catch (Exception)
#pragma warning restore CA1031
            {
                return default;
            }
        }

        public async Task CommitAsync(CancellationToken cancellationToken)
        {
            await _committing.CancelAsync().ConfigureAwait(false);
            var shipped = await Task.WhenAll(_shipping).WaitAsync(cancellationToken).ConfigureAwait(false);
            _commitBegun = true;
            var shippedIn = new Dictionary<IngestedNar, long?>(ReferenceEqualityComparer.Instance);
            for (var i = 0; i < _uploads.Count; i++)
            {
                shippedIn[_uploads[i].Nar] = shipped[i].Stored ? shipped[i].Period : null;
            }

            await view.CommitAsync(_uploads, cancellationToken, shippedIn: u => shippedIn[u.Nar]).ConfigureAwait(false);
            _committed = true;
        }

        public async ValueTask DisposeAsync()
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            // Anything not committed (the client went away, an upload failed): nothing registered, no files left. A
            // blob still being shipped is stopped first: its spool file goes with it.
            await _abandon.CancelAsync().ConfigureAwait(false);
            var shipped = await Task.WhenAll(_shipping).ConfigureAwait(false);
            if (!_committed)
            {
                await ForgetShippedAsync(_uploads.Where((_, i) => shipped[i].Stored || _commitBegun).Select(u => u.Nar.NarHash).ToHashSet()).ConfigureAwait(false);
            }

            foreach (var upload in _uploads)
            {
                await upload.Nar.DisposeAsync().ConfigureAwait(false);
            }

            _uploads.Clear();
            _shipping.Clear();
            _shipSlots.Dispose();
            _committing.Dispose();
            _abandon.Dispose();
        }

        // What an abandoned batch shipped is deleted now (unless a path names it meanwhile), not left for the sweep's
        // grace period: a client that sends and never commits must not keep the bucket filled. Best effort: what this
        // misses (the bucket away), the sweep takes.
        private async Task ForgetShippedAsync(HashSet<NixHash> shipped)
        {
            if (shipped.Count == 0)
            {
                return;
            }

            try
            {
                await view._store.GarbageCollector.DeleteUnnamedAsync(shipped, CancellationToken.None).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // disposing never fails for it; the sweep takes what is left
            catch (Exception)
#pragma warning restore CA1031
            {
            }
        }
    }
}
