using Kiln.Nix.Hashing;

namespace Kiln.Store;

/// <summary>Offline checks of a whole store, for <c>kiln store verify</c>.</summary>
public static class StoreMaintenance
{
    /// <summary>What a full verification found.</summary>
    public sealed record VerifyReport(int Blobs, long Bytes, IReadOnlyList<string> Problems);

    /// <summary>
    /// Re-hashes every blob against the hash in its name, and checks that every path of every account has its blob.
    /// </summary>
    public static async Task<VerifyReport> VerifyAllAsync(KilnStore store, Action<string> progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(progress);
        var problems = new List<string>();
        var blobs = 0;
        long bytes = 0;
        var present = new HashSet<NixHash>();
        foreach (var (hash, path, _) in store.Blobs.Enumerate())
        {
            var actual = await StoreView.HashFileAsync(path, cancellationToken).ConfigureAwait(false);
            blobs++;
            bytes += new FileInfo(path).Length;
            if (actual != hash)
            {
                problems.Add($"blob {path} is corrupt: its name says {hash.ToNix32()}, its contents hash to {actual.ToNix32()}");
            }
            else
            {
                present.Add(hash);
            }
        }

        progress($"checked {blobs} blobs ({bytes} bytes)");
        foreach (var account in await store.Metadata.ListAccountsAsync(cancellationToken).ConfigureAwait(false))
        {
            foreach (var node in await store.Metadata.GetGraphAsync(account.Id, cancellationToken).ConfigureAwait(false))
            {
                if (!present.Contains(node.NarHash))
                {
                    problems.Add($"account '{account.Name}': path '{node.Path}' has no intact contents (blob {node.NarHash.ToNix32()})");
                }
            }
        }

        return new VerifyReport(blobs, bytes, problems);
    }
}
