using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Worker;

namespace Kiln.Protocol.Tests;

/// <summary>An in-memory store for session tests: it keeps infos and NAR bytes, and checks hashes as a real one does.</summary>
public sealed class FakeStore : IWorkerStore
{
    public Dictionary<StorePath, ValidPathInfo> Infos { get; } = [];

    public Dictionary<StorePath, byte[]> Nars { get; } = [];

    public List<StorePath> TempRoots { get; } = [];

    public Dictionary<string, StorePath> PermRoots { get; } = [];

    public Dictionary<StorePath, Dictionary<string, StorePath?>> Outputs { get; } = [];

    public List<string> Calls { get; } = [];

    public void Add(ValidPathInfo info, byte[] nar)
    {
        Infos[info.Path] = info;
        Nars[info.Path] = nar;
    }

    public Task<IReadOnlySet<StorePath>> QueryValidPathsAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlySet<StorePath>>(new SortedSet<StorePath>(paths.Where(Infos.ContainsKey)));

    public Task<IReadOnlyDictionary<StorePath, ValidPathInfo>> QueryPathInfosAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlyDictionary<StorePath, ValidPathInfo>>(paths.Where(Infos.ContainsKey).ToDictionary(p => p, p => Infos[p]));

    public Task<StorePath?> QueryPathFromHashPartAsync(string hashPart, CancellationToken cancellationToken) =>
        Task.FromResult<StorePath?>(Infos.Keys.Where(k => k.HashPart == hashPart).Select(k => (StorePath?)k).FirstOrDefault());

    public Task<IReadOnlySet<StorePath>> QueryReferrersAsync(StorePath path, CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlySet<StorePath>>(new SortedSet<StorePath>(Infos.Values.Where(i => i.References.Contains(path)).Select(i => i.Path)));

    public Task<IReadOnlySet<StorePath>> QueryValidDeriversAsync(StorePath path, CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlySet<StorePath>>(new SortedSet<StorePath>(Outputs.Where(o => o.Value.ContainsValue(path)).Select(o => o.Key)));

    public Task<IReadOnlyDictionary<string, StorePath?>> QueryDerivationOutputMapAsync(StorePath drvPath, CancellationToken cancellationToken) =>
        Outputs.TryGetValue(drvPath, out var outputs)
            ? Task.FromResult<IReadOnlyDictionary<string, StorePath?>>(outputs)
            : throw new NixErrorException($"path '{drvPath}' is not valid");

    public Task<IReadOnlySet<StorePath>> QueryAllValidPathsAsync(CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlySet<StorePath>>(new SortedSet<StorePath>(Infos.Keys));

    public Task<MissingPaths> QueryMissingAsync(IReadOnlyList<DerivedPath> targets, IClientLog log, CancellationToken cancellationToken)
    {
        var unknown = new SortedSet<StorePath>(targets.OfType<DerivedPath.Opaque>().Select(t => t.Path).Where(p => !Infos.ContainsKey(p)));
        var willBuild = new SortedSet<StorePath>(targets.OfType<DerivedPath.Built>().Select(t => t.DrvPath));
        return Task.FromResult(new MissingPaths(willBuild, new SortedSet<StorePath>(), unknown, 0, 0));
    }

    public async Task AddToStoreAsync(ValidPathInfo info, Stream nar, bool repair, bool checkSignatures, CancellationToken cancellationToken)
    {
        Calls.Add($"AddToStore {info.Path.Name}");
        var bytes = await ReadAllAsync(nar, cancellationToken).ConfigureAwait(false);
        if (NixHash.Compute(NixHashAlgorithm.Sha256, bytes) != info.NarHash || bytes.Length != info.NarSize)
        {
            throw new NixErrorException($"hash mismatch importing path '{info.Path}'");
        }

        Add(info, bytes);
    }

    public IUploadBatch BeginUploads(bool repair, bool checkSignatures) => new Batch(this);

    public async Task<ValidPathInfo> AddContentAddressedAsync(string name, ContentAddressMethodAndAlgorithm method, Stream data,
        IReadOnlySet<StorePath> references, bool repair, CancellationToken cancellationToken)
    {
        var bytes = await ReadAllAsync(data, cancellationToken).ConfigureAwait(false);
        Calls.Add($"AddContentAddressed {name} {method.ToCamString()} {bytes.Length}");
        byte[] nar;
        NixHash caHash;
        if (method.Method == ContentAddressMethod.Recursive)
        {
            nar = bytes;
            caHash = NixHash.Compute(method.Algorithm, nar);
        }
        else
        {
            using var output = new MemoryStream();
            using (var writer = new NarWriter(output))
            {
                writer.RegularFile(false, bytes.Length);
                writer.Contents(bytes);
                writer.EndRegularFile();
            }

            nar = output.ToArray();
            caHash = NixHash.Compute(method.Algorithm, bytes);
        }

        var ca = new ContentAddress(method.Method, caHash);
        var path = method.Method == ContentAddressMethod.Text
            ? StorePathComputer.MakeTextPath(name, caHash, references)
            : StorePathComputer.MakeFixedOutputPath(name, ca, references);
        var info = new ValidPathInfo
        {
            Path = path,
            NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar),
            NarSize = nar.Length,
            References = new SortedSet<StorePath>(references),
            ContentAddress = ca,
            RegistrationTime = 1700000000,
        };
        Add(info, nar);
        return info;
    }

    public Task<NarBlob?> OpenNarAsync(StorePath path, CancellationToken cancellationToken)
    {
        if (!Nars.TryGetValue(path, out var nar))
        {
            return Task.FromResult<NarBlob?>(null);
        }

        return Task.FromResult<NarBlob?>(new NarBlob(new MemoryStream(nar, writable: false), nar.Length, Infos[path].NarHash));
    }

    public Task AddTempRootAsync(StorePath path, CancellationToken cancellationToken)
    {
        TempRoots.Add(path);
        return Task.CompletedTask;
    }

    public Task AddIndirectRootAsync(string link, CancellationToken cancellationToken)
    {
        Calls.Add($"AddIndirectRoot {link}");
        return Task.CompletedTask;
    }

    public Task<string> AddPermRootAsync(StorePath path, string rootName, CancellationToken cancellationToken)
    {
        PermRoots[rootName] = path;
        return Task.FromResult(rootName);
    }

    public Task<IReadOnlyList<KeyValuePair<string, StorePath>>> FindRootsAsync(CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlyList<KeyValuePair<string, StorePath>>>(PermRoots.ToList());

    public Task<GcResult> CollectGarbageAsync(GcRequest request, CancellationToken cancellationToken)
    {
        var dead = Infos.Keys.Where(p => !PermRoots.ContainsValue(p)).Order().ToList();
        if (request.Action == GcAction.DeleteDead)
        {
            foreach (var path in dead)
            {
                Infos.Remove(path);
            }

            return Task.FromResult(new GcResult(dead, dead.Count * 100));
        }

        return Task.FromResult(new GcResult(request.Action == GcAction.ReturnDead ? dead : [], 0));
    }

    public Task AddSignaturesAsync(StorePath path, IReadOnlySet<string> signatures, CancellationToken cancellationToken)
    {
        if (!Infos.TryGetValue(path, out var info))
        {
            throw new NixErrorException($"path '{path}' is not valid");
        }

        Infos[path] = info with { Signatures = new SortedSet<string>(info.Signatures.Concat(signatures), StringComparer.Ordinal) };
        return Task.CompletedTask;
    }

    public Task<bool> VerifyStoreAsync(bool checkContents, bool repair, IClientLog log, CancellationToken cancellationToken)
    {
        log.Log("checking the fake store");
        return Task.FromResult(false);
    }

    public Task EnsurePathAsync(StorePath path, CancellationToken cancellationToken) =>
        Infos.ContainsKey(path) ? Task.CompletedTask : throw new NixErrorException($"path '{path}' does not exist and cannot be created");

    private static async Task<byte[]> ReadAllAsync(Stream stream, CancellationToken cancellationToken)
    {
        using var buffer = new MemoryStream();
        await stream.CopyToAsync(buffer, cancellationToken).ConfigureAwait(false);
        return buffer.ToArray();
    }

    private sealed class Batch(FakeStore store) : IUploadBatch
    {
        private readonly List<(ValidPathInfo Info, byte[] Nar)> _pending = [];

        public async Task AddAsync(ValidPathInfo info, Stream nar, CancellationToken cancellationToken)
        {
            var bytes = await ReadAllAsync(nar, cancellationToken).ConfigureAwait(false);
            if (NixHash.Compute(NixHashAlgorithm.Sha256, bytes) != info.NarHash)
            {
                throw new NixErrorException($"hash mismatch importing path '{info.Path}'");
            }

            _pending.Add((info, bytes));
        }

        public Task CommitAsync(CancellationToken cancellationToken)
        {
            foreach (var (info, nar) in _pending)
            {
                store.Add(info, nar);
            }

            store.Calls.Add($"Commit {_pending.Count}");
            _pending.Clear();
            return Task.CompletedTask;
        }

        public ValueTask DisposeAsync()
        {
            if (_pending.Count > 0)
            {
                store.Calls.Add($"Discard {_pending.Count}");
            }

            return ValueTask.CompletedTask;
        }
    }
}
