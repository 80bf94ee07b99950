using Kiln.Nix.Hashing;

namespace Kiln.Store;

/// <summary>Offline checks of a whole store, for <c>kiln store verify</c>.</summary>
public static class StoreMaintenance
{
    /// <summary>What a full verification found.</summary>
    public sealed record VerifyReport(int Blobs, long Bytes, IReadOnlyList<string> Problems);

    /// <summary>
    /// Re-hashes every blob against the hash in its name, and checks that every path of every account has its blob and
    /// its whole closure in that account's view (a registration interrupted half-way must leave none of it).
    /// </summary>
    public static async Task<VerifyReport> VerifyAllAsync(KilnStore store, Action<string> progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(progress);
        var problems = new List<string>();
        var blobs = 0;
        long bytes = 0;
        var present = new HashSet<NixHash>();
        await foreach (var blob in store.Blobs.ListAsync(cancellationToken).ConfigureAwait(false))
        {
            var (actual, damage) = await StoreView.CheckBlobAsync(store.Blobs, blob.Hash, cancellationToken).ConfigureAwait(false);
            if (actual is null && damage is null)
            {
                continue; // collected while this ran
            }

            blobs++;
            bytes += blob.Length;
            if (damage is not null)
            {
                problems.Add($"blob {blob.Hash.ToNix32()} is corrupt: {damage}");
            }
            else if (actual is { } contents && contents != blob.Hash)
            {
                problems.Add($"blob {blob.Hash.ToNix32()} is corrupt: its contents hash to {contents.ToNix32()}");
            }
            else
            {
                present.Add(blob.Hash);
            }
        }

        progress($"checked {blobs} blobs ({bytes} bytes)");
        foreach (var account in await store.Metadata.ListAccountsAsync(cancellationToken).ConfigureAwait(false))
        {
            var graph = await store.Metadata.GetGraphAsync(account.Id, cancellationToken).ConfigureAwait(false);
            var valid = graph.Select(n => n.Path).ToHashSet();
            foreach (var node in graph)
            {
                if (!present.Contains(node.NarHash))
                {
                    problems.Add($"account '{account.Name}': path '{node.Path}' has no intact contents (blob {node.NarHash.ToNix32()})");
                }

                foreach (var reference in node.References.Where(r => !valid.Contains(r)))
                {
                    problems.Add($"account '{account.Name}': path '{node.Path}' refers to '{reference}', which is not valid in that view");
                }
            }
        }

        return new VerifyReport(blobs, bytes, problems);
    }
}
