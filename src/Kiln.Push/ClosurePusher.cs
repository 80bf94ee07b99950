using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Kiln.Nix;
using Kiln.Nix.Compression;
using Kiln.Nix.Hashing;
using Kiln.Nix.Signing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Store;
using Kiln.Store.Metadata;
using Kiln.Store.Push;

namespace Kiln.Push;

/// <summary>
/// Pushes store paths and their closure, minus what the cache has, into a binary cache as Nix lays one out: a
/// <c>nix-cache-info</c>, each path's NAR (compressed as the target asks) under <c>nar/</c>, then its narinfo, signed
/// with the account's key. A path's references go before it and its NAR before its narinfo, so a cache a push
/// stopped halfway still never names a file it lacks. NARs stream: a compressed one is written once to a temporary
/// file (its hash and size go in the narinfo before the upload), an uncompressed one goes straight from the blob.
/// </summary>
internal sealed class ClosurePusher(string temporaryDirectory)
{
    private const int Questions = 8; // narinfo HEADs in flight at once
    private const int MostKnown = 200_000;
    private static readonly TimeSpan KnownFor = TimeSpan.FromMinutes(10);

    // Narinfos an account's target was seen to have (or was given) lately, by account, target and hash part: the
    // pushes of a DAG's builds share most of their closures, and asking again for each would be a HEAD per path per
    // build. Kept per account (one account learns nothing of another's cache through it) and for ten minutes (a cache
    // collected by its owner meanwhile is refilled by the pushes after that).
    private readonly ConcurrentDictionary<string, long> _known = new(StringComparer.Ordinal);

    /// <summary>Pushes <paramref name="paths"/> and their closure in <paramref name="view"/>; returns how many paths were uploaded.</summary>
    public async Task<int> PushAsync(StoreView view, IReadOnlyList<StorePath> paths, ICacheWriter cache, PushTarget target, SecretKey key, CancellationToken cancellationToken)
    {
        var closure = await ClosureAsync(view, paths, cancellationToken).ConfigureAwait(false);
        var scope = $"{view.AccountId}\n{target.Url}\n";
        var missing = new ConcurrentBag<StorePath>();
        await Parallel.ForEachAsync(closure.Keys, new ParallelOptions { MaxDegreeOfParallelism = Questions, CancellationToken = cancellationToken }, async (path, token) =>
        {
            if (Known(scope + path.HashPart))
            {
                return;
            }

            if (await cache.ExistsAsync(path.HashPart + ".narinfo", token).ConfigureAwait(false))
            {
                Remember(scope + path.HashPart);
            }
            else
            {
                missing.Add(path);
            }
        }).ConfigureAwait(false);
        if (missing.IsEmpty)
        {
            return 0;
        }

        if (!await cache.ExistsAsync("nix-cache-info", cancellationToken).ConfigureAwait(false))
        {
            await PutTextAsync(cache, "nix-cache-info", $"StoreDir: {StorePath.StoreDir}\nWantMassQuery: 1\nPriority: 50\n", "text/x-nix-cache-info", cancellationToken).ConfigureAwait(false);
        }

        var ordered = ReferencesFirst(missing.ToHashSet(), closure);
        foreach (var path in ordered)
        {
            await PushPathAsync(view, closure[path].Info, cache, target, key, cancellationToken).ConfigureAwait(false);
            Remember(scope + path.HashPart);
        }

        return ordered.Count;
    }

    private bool Known(string entry) => _known.TryGetValue(entry, out var until) && until > Environment.TickCount64;

    private void Remember(string entry)
    {
        if (_known.Count >= MostKnown)
        {
            _known.Clear(); // (bounded: asking again is only slower)
        }

        _known[entry] = Environment.TickCount64 + (long)KnownFor.TotalMilliseconds;
    }

    /// <summary>The closure of <paramref name="paths"/> in the account's view; every one of them must still be there.</summary>
    internal static async Task<IReadOnlyDictionary<StorePath, PathRecord>> ClosureAsync(StoreView view, IReadOnlyList<StorePath> paths, CancellationToken cancellationToken)
    {
        var closure = await view.GetClosureAsync(paths, cancellationToken).ConfigureAwait(false);
        var gone = paths.Where(p => !closure.ContainsKey(p)).ToList();
        return gone.Count > 0 ? throw new PushException($"'{gone[0]}' is no longer in the account's store", permanent: true) : closure;
    }

    private async Task PushPathAsync(StoreView view, ValidPathInfo info, ICacheWriter cache, PushTarget target, SecretKey key, CancellationToken cancellationToken)
    {
        var source = await OpenNarAsync(view, info, cancellationToken).ConfigureAwait(false);
        string url;
        NixHash fileHash;
        long fileSize;
        await using (source.ConfigureAwait(false))
        {
            var nar = await source.OpenStreamAsync(cancellationToken).ConfigureAwait(false);
            if (target.Compression == "none")
            {
                (fileHash, fileSize) = (info.NarHash, info.NarSize);
                url = $"nar/{fileHash.ToNix32()}.nar";
                if (!await cache.ExistsAsync(url, cancellationToken).ConfigureAwait(false))
                {
                    await cache.PutAsync(url, nar, fileSize, "application/x-nix-nar", cancellationToken).ConfigureAwait(false);
                }
            }
            else
            {
                Directory.CreateDirectory(temporaryDirectory);
                var file = new FileStream(Path.Combine(temporaryDirectory, $"push-{Guid.NewGuid():N}.nar"), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16,
                    FileOptions.DeleteOnClose | FileOptions.Asynchronous);
                await using (file.ConfigureAwait(false))
                {
                    fileHash = await CompressAsync(nar, target, file, cancellationToken).ConfigureAwait(false);
                    fileSize = file.Length;
                    url = $"nar/{fileHash.ToNix32()}.nar{Decompression.Extension(target.Compression)}";
                    file.Position = 0;
                    if (!await cache.ExistsAsync(url, cancellationToken).ConfigureAwait(false))
                    {
                        await cache.PutAsync(url, file, fileSize, "application/x-nix-nar", cancellationToken).ConfigureAwait(false);
                    }
                }
            }
        }

        var narInfo = NarInfo.Of(info, url, target.Compression, fileHash, fileSize).WithSignature(key);
        await PutTextAsync(cache, info.Path.HashPart + ".narinfo", narInfo.ToString(), "text/x-nix-narinfo", cancellationToken).ConfigureAwait(false);
    }

    // The NAR compressed into the file, hashed (SHA-256, as Nix's FileHash) on the way.
    private static async Task<NixHash> CompressAsync(Stream nar, PushTarget target, FileStream file, CancellationToken cancellationToken)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var compressed = Compressors.Open(target.Compression, nar, target.CompressionLevel);
        await using (compressed.ConfigureAwait(false))
        {
            var buffer = new byte[1 << 17];
            int n;
            while ((n = await compressed.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
            {
                hash.AppendData(buffer, 0, n);
                await file.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            }
        }

        return new NixHash(NixHashAlgorithm.Sha256, hash.GetHashAndReset());
    }

    private static async Task PutTextAsync(ICacheWriter cache, string file, string text, string contentType, CancellationToken cancellationToken)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        using var content = new MemoryStream(bytes, writable: false);
        await cache.PutAsync(file, content, bytes.Length, contentType, cancellationToken).ConfigureAwait(false);
    }

    // The paths in an order where each comes after those of them it refers to.
    internal static List<StorePath> ReferencesFirst(HashSet<StorePath> paths, IReadOnlyDictionary<StorePath, PathRecord> closure) =>
        Graph.Order(paths.Order(), p => closure[p].Info.References, paths);

    /// <summary>The NAR of a path of the closure, from the blob store (through the account's view).</summary>
    internal static async Task<Kiln.Store.Blobs.BlobSource> OpenNarAsync(StoreView view, ValidPathInfo info, CancellationToken cancellationToken) =>
        await view.OpenNarByHashAsync(info.NarHash, cancellationToken).ConfigureAwait(false)
            ?? throw new PushException($"the contents of '{info.Path}' are not in Kiln's store now");
}
