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
        if (!repair && (await QueryValidPathsAsync([info.Path], cancellationToken).ConfigureAwait(false)).Contains(info.Path))
        {
            _tempRoots.Add(info.Path);
            return; // already valid: the caller drains the NAR
        }

        var upload = await IngestDeclaredAsync(info, nar, cancellationToken).ConfigureAwait(false);
        try
        {
            await CommitAsync([upload], cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            Discard(upload.Nar);
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
            throw new NixErrorException($"invalid store path name '{name}': {e.Message}");
        }

        if (method.Method == ContentAddressMethod.Git)
        {
            throw new NixErrorException("git content addresses are not supported by Kiln");
        }

        if (method.Method == ContentAddressMethod.Text && method.Algorithm != NixHashAlgorithm.Sha256)
        {
            throw new NixErrorException("text content addresses are always sha256");
        }

        var captureUpTo = name.EndsWith(".drv", StringComparison.Ordinal) ? ATerm.MaxSize : 0;
        var unpackTo = _store.MaterialisedFor(AccountId)?.NewTemporaryPath();
        var ingested = method.Method == ContentAddressMethod.Recursive
            ? await NarIngest.IngestAsync(_store.Blobs, data, method, captureUpTo, _store.Options.MaxNarSize, cancellationToken, unpackTo).ConfigureAwait(false)
            : await NarIngest.IngestFlatAsync(_store.Blobs, data, method.Algorithm, captureUpTo, _store.Options.MaxNarSize, cancellationToken, unpackTo).ConfigureAwait(false);
        try
        {
            var ca = new ContentAddress(method.Method, ingested.ContentHash!.Value);
            StorePath path;
            try
            {
                path = method.Method == ContentAddressMethod.Text
                    ? StorePathComputer.MakeTextPath(name, ca.Hash, references)
                    : StorePathComputer.MakeFixedOutputPath(name, ca, references);
            }
            catch (NixFormatException e)
            {
                throw new NixErrorException(e.Message);
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
                var existing = await QueryPathInfosAsync([path], cancellationToken).ConfigureAwait(false);
                if (existing.TryGetValue(path, out var known))
                {
                    _tempRoots.Add(path);
                    return known;
                }
            }

            var upload = new Upload(info, ingested, PathTrust.ContentAddressed, DerivationOutputs(path, ingested.FileContents));
            await CommitAsync([upload], cancellationToken).ConfigureAwait(false);
            return info;
        }
        finally
        {
            Discard(ingested);
        }
    }

    /// <summary>An upload that has been streamed to a temporary blob and verified, waiting to be registered.</summary>
    private sealed record Upload(ValidPathInfo Info, IngestedNar Nar, PathTrust Trust, IReadOnlyDictionary<string, StorePath?>? Outputs);

    // Streams a declared upload to a temporary blob and checks it against what the client declared.
    private async Task<Upload> IngestDeclaredAsync(ValidPathInfo info, Stream nar, CancellationToken cancellationToken)
    {
        if (info.NarHash.Algorithm != NixHashAlgorithm.Sha256)
        {
            throw new NixErrorException($"cannot add '{info.Path}': its NAR hash must be SHA-256");
        }

        ContentAddressMethodAndAlgorithm? contentMethod = null;
        if (info.ContentAddress is { } ca)
        {
            if (!info.PathMatchesContentAddress())
            {
                throw new NixErrorException($"path '{info.Path}' claims to be content-addressed as '{ca}', but its name does not follow from that");
            }

            contentMethod = ca.MethodAndAlgorithm;
        }

        var captureUpTo = info.Path.IsDerivation ? ATerm.MaxSize : 0;
        var unpackTo = _store.MaterialisedFor(AccountId)?.NewTemporaryPath();
        var ingested = await NarIngest.IngestAsync(_store.Blobs, nar, contentMethod, captureUpTo, _store.Options.MaxNarSize, cancellationToken, unpackTo).ConfigureAwait(false);
        try
        {
            if (ingested.NarSize != info.NarSize)
            {
                throw new NixErrorException($"size mismatch importing path '{info.Path}';\n  specified: {info.NarSize}\n  got:       {ingested.NarSize}");
            }

            if (ingested.NarHash != info.NarHash)
            {
                throw new NixErrorException($"hash mismatch importing path '{info.Path}';\n  specified: {Describe(info.NarHash)}\n  got:       {Describe(ingested.NarHash)}");
            }

            if (info.ContentAddress is { } address && ingested.ContentHash != address.Hash)
            {
                throw new NixErrorException($"ca hash mismatch importing path '{info.Path}';\n  specified: {Describe(address.Hash)}\n  got:       {Describe(ingested.ContentHash!.Value)}");
            }

            var trust = info.ContentAddress is null ? PathTrust.Untrusted : PathTrust.ContentAddressed;
            var stored = info with { Ultimate = false, RegistrationTime = DateTimeOffset.UtcNow.ToUnixTimeSeconds() };
            return new Upload(stored, ingested, trust, DerivationOutputs(info.Path, ingested.FileContents));
        }
        catch
        {
            Discard(ingested);
            throw;
        }
    }

    // Moves verified blobs into place and registers their paths, all in one transaction, with the collector held off.
    private async Task CommitAsync(IReadOnlyList<Upload> uploads, CancellationToken cancellationToken)
    {
        var ordered = TopologicalOrder(uploads);
        using var shared = await _store.GcLock.SharedAsync(cancellationToken).ConfigureAwait(false);
        foreach (var upload in ordered)
        {
            _store.Blobs.Commit(upload.Nar.TempPath, upload.Nar.NarHash);
        }

        try
        {
            await Metadata.RegisterAsync(AccountId,
                ordered.Select(u => new NewPath(u.Info, Provenance.Uploaded, u.Trust, u.Outputs)).ToList(), cancellationToken).ConfigureAwait(false);
        }
        catch (MissingReferencesException e)
        {
            // The blobs stay until the collector finds that nothing names them.
            throw new NixErrorException(e.Message);
        }

        foreach (var upload in ordered)
        {
            _tempRoots.Add(upload.Info.Path);
        }

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

    // Removes what an upload left in temporary places (after a commit, only what was not used).
    private static void Discard(IngestedNar ingested)
    {
        BlobStore.DeleteTemp(ingested.TempPath);
        if (ingested.TreePath is { } tree && Path.Exists(tree))
        {
            Kiln.Nix.Nar.NarExtractor.DeleteTree(tree);
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

    /// <summary>AddMultipleToStore: every upload verified as it arrives, all registered together at the end.</summary>
    private sealed class UploadBatch(StoreView view) : IUploadBatch
    {
        private readonly List<Upload> _uploads = [];
        private readonly HashSet<StorePath> _seen = [];

        public async Task AddAsync(ValidPathInfo info, Stream nar, CancellationToken cancellationToken)
        {
            if (!_seen.Add(info.Path) || (await view.QueryValidPathsAsync([info.Path], cancellationToken).ConfigureAwait(false)).Contains(info.Path))
            {
                view._tempRoots.Add(info.Path);
                return; // already there: the caller drains the NAR
            }

            _uploads.Add(await view.IngestDeclaredAsync(info, nar, cancellationToken).ConfigureAwait(false));
        }

        public async Task CommitAsync(CancellationToken cancellationToken)
        {
            await view.CommitAsync(_uploads, cancellationToken).ConfigureAwait(false);
        }

        public ValueTask DisposeAsync()
        {
            // Anything not committed (the client went away, an upload failed): nothing registered, no files left.
            foreach (var upload in _uploads)
            {
                Discard(upload.Nar);
            }

            _uploads.Clear();
            return ValueTask.CompletedTask;
        }
    }
}
