using Kiln.Nix;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Protocol.Worker;
using Kiln.Store.Blobs;
using Kiln.Store.Metadata;

namespace Kiln.Store.Gc;

/// <summary>
/// Garbage collection of one account's view, and of blobs nobody names. A path is live when a root reaches it
/// through references: the account's permanent roots, its indirect roots whose link still points at the path, and
/// the temporary roots of its live sessions; the deriver of a live path is live too (Nix's default
/// <c>keep-derivations</c>). Dead paths leave the view referrers first; a blob is deleted once no view of any
/// account names it any more.
/// </summary>
public sealed class GarbageCollector(IMetadataStore metadata, IBlobStore blobs, TempRoots tempRoots, GcLock gcLock, StoreOptions options, KilnStore store)
{
    /// <summary>
    /// Collects in one account's view. With <paramref name="keepRecent"/>, paths registered less than that long ago are
    /// kept as if rooted: what the server's own collections give pushes in flight that no session holds (an HTTP push
    /// registers a closure path by path, one request each). With <paramref name="retention"/> (the server's own
    /// collections, not one a client asks for), paths the account registered or used within its <c>retention</c>
    /// setting are kept as if rooted too, and with them what they refer to.
    /// </summary>
    public async Task<GcResult> CollectAsync(long account, GcRequest request, CancellationToken cancellationToken, TimeSpan? keepRecent = null, bool retention = false)
    {
        ArgumentNullException.ThrowIfNull(request);
        var kept = TimeSpan.Zero;
        IReadOnlyList<BuildRecord> retainedBuilds = [];
        if (retention && store.AccountPolicy is { } policy)
        {
            kept = await policy.RetentionAsync(account, cancellationToken).ConfigureAwait(false);
            var builds = await policy.RetainedBuildsAsync(account, cancellationToken).ConfigureAwait(false);
            if (builds > 0)
            {
                retainedBuilds = await metadata.ListBuildsAsync(account, new BuildQuery { Limit = Math.Min(builds, 10_000), State = BuildState.Built }, cancellationToken)
                    .ConfigureAwait(false);
            }

            await store.Usage.FlushAsync(cancellationToken).ConfigureAwait(false); // the latest uses first
        }

        var exclusive = await gcLock.ExclusiveAsync(cancellationToken).ConfigureAwait(false);
        await using var _ = exclusive.ConfigureAwait(false);
        var graph = await metadata.GetGraphAsync(account, cancellationToken).ConfigureAwait(false);
        var nodes = graph.ToDictionary(n => n.Path);
        // Only a collection that deletes prunes stale indirect roots: asking what is live or dead changes nothing.
        var roots = await RootsAsync(account, cancellationToken, prune: request.Action is not (GcAction.ReturnLive or GcAction.ReturnDead)).ConfigureAwait(false);
        // Other front doors' sessions hold temporary roots this one cannot see (a closure being copied leaf first
        // through one of them): what was registered within the grace period is kept as if it were rooted.
        var recent = exclusive.AcrossProcesses && options.BlobGracePeriod > (keepRecent ?? TimeSpan.Zero) ? options.BlobGracePeriod : keepRecent ?? TimeSpan.Zero;
        if (recent > TimeSpan.Zero)
        {
            var since = DateTimeOffset.UtcNow.ToUnixTimeSeconds() - (long)recent.TotalSeconds;
            var name = exclusive.AcrossProcesses ? "{temp:another-front-door}" : "{temp:recently-registered}";
            roots = [.. roots, .. graph.Where(n => n.RegistrationTime > since).Select(n => new KeyValuePair<string, StorePath>(name, n.Path))];
        }

        if (kept > TimeSpan.Zero)
        {
            var since = DateTimeOffset.UtcNow.ToUnixTimeSeconds() - (long)kept.TotalSeconds;
            roots = [.. roots, .. graph.Where(n => Math.Max(n.RegistrationTime, n.LastUsed) > since)
                .Select(n => new KeyValuePair<string, StorePath>("{retention:used-recently}", n.Path))];
        }

        // The outputs of the account's latest successful builds (retention-builds), as far as its view still has them.
        roots = [.. roots, .. retainedBuilds.SelectMany(b => b.Outputs).Where(o => nodes.ContainsKey(o.Path))
            .Select(o => new KeyValuePair<string, StorePath>("{retention:latest-builds}", o.Path))];

        var live = Mark(nodes, roots);

        switch (request.Action)
        {
            case GcAction.ReturnLive:
                return new GcResult(live.Order().ToList(), 0);
            case GcAction.ReturnDead:
                return new GcResult(nodes.Keys.Where(p => !live.Contains(p)).Order().ToList(), 0);
        }

        HashSet<StorePath> dead;
        if (request.Action == GcAction.DeleteSpecific)
        {
            foreach (var path in request.PathsToDelete)
            {
                if (live.Contains(path))
                {
                    throw new KilnException(ErrorKind.Conflict, $"cannot delete path '{path}' since it is still alive. To find out why, use: nix-store --query --roots");
                }
            }

            // The requested paths and whatever (dead) refers to them.
            var referrers = Referrers(nodes);
            dead = [];
            var queue = new Queue<StorePath>(request.PathsToDelete.Where(nodes.ContainsKey));
            while (queue.TryDequeue(out var path))
            {
                if (dead.Add(path))
                {
                    foreach (var referrer in referrers.GetValueOrDefault(path) ?? [])
                    {
                        queue.Enqueue(referrer);
                    }
                }
            }
        }
        else
        {
            dead = nodes.Keys.Where(p => !live.Contains(p)).ToHashSet();
        }

        // Referrers before what they refer to; stop once enough bytes are freed.
        var order = ReferrersFirst(dead, nodes);
        var deleted = new List<StorePath>();
        long freed = 0;
        foreach (var path in order)
        {
            if (freed >= request.MaxFreed && request.MaxFreed > 0)
            {
                break;
            }

            deleted.Add(path);
            freed += nodes[path].NarSize;
        }

        // With a limit, a prefix in referrers-first order never removes a path something kept still needs.
        await metadata.DeletePathsAsync(account, deleted, cancellationToken).ConfigureAwait(false);
        store.MaterialisedFor(account)?.Remove(deleted);
        await SweepBlobsAsync(deleted.Select(p => nodes[p].NarHash).Distinct().ToList(), cancellationToken).ConfigureAwait(false);
        if (deleted.Count > 0)
        {
            StoreLog.Collected(options.Logger, account, deleted.Count, freed);
        }

        KilnMetrics.GcRuns.Add(1);
        KilnMetrics.GcFreed.Add(freed);
        return new GcResult(deleted, freed);
    }

    /// <summary>The account's roots: permanent, indirect (still pointing where they did), and its sessions' temporary roots.</summary>
    public async Task<IReadOnlyList<KeyValuePair<string, StorePath>>> RootsAsync(long account, CancellationToken cancellationToken, bool prune = true)
    {
        var roots = new List<KeyValuePair<string, StorePath>>();
        foreach (var root in await metadata.GetRootsAsync(account, cancellationToken).ConfigureAwait(false))
        {
            if (root.Kind is RootKind.Permanent or RootKind.Pin)
            {
                roots.Add(new(root.Name, root.Path));
            }
            else if (IndirectRootHolds(root))
            {
                roots.Add(new(root.Name, root.Path));
            }
            else if (prune)
            {
                // The link is gone or points elsewhere: the root is stale, as Nix has it.
                await metadata.RemoveRootAsync(account, RootKind.Indirect, root.Name, cancellationToken).ConfigureAwait(false);
            }
        }

        roots.AddRange(tempRoots.For(account));
        roots.AddRange(await tempRoots.ElsewhereAsync(account, cancellationToken).ConfigureAwait(false)); // other front doors' sessions
        return roots;
    }

    private static bool IndirectRootHolds(RootRecord root)
    {
        try
        {
            var target = new FileInfo(root.Name).LinkTarget;
            return target is not null && StorePath.TryParse(target, out var path) && path == root.Path;
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return true; // not readable from here (another user, another mount namespace): it may well hold, so it is kept
        }
    }

    private static HashSet<StorePath> Mark(Dictionary<StorePath, GraphNode> nodes, IEnumerable<KeyValuePair<string, StorePath>> roots)
    {
        var live = new HashSet<StorePath>();
        var stack = new Stack<StorePath>(roots.Select(r => r.Value).Where(nodes.ContainsKey));
        while (stack.TryPop(out var path))
        {
            if (!live.Add(path))
            {
                continue;
            }

            var node = nodes[path];
            foreach (var reference in node.References)
            {
                if (nodes.ContainsKey(reference))
                {
                    stack.Push(reference);
                }
            }

            if (node.Deriver is { } deriver && nodes.ContainsKey(deriver))
            {
                stack.Push(deriver);
            }
        }

        return live;
    }

    private static Dictionary<StorePath, List<StorePath>> Referrers(Dictionary<StorePath, GraphNode> nodes)
    {
        var referrers = new Dictionary<StorePath, List<StorePath>>();
        foreach (var node in nodes.Values)
        {
            foreach (var reference in node.References)
            {
                if (!referrers.TryGetValue(reference, out var list))
                {
                    referrers[reference] = list = [];
                }

                list.Add(node.Path);
            }
        }

        return referrers;
    }

    // A topological order of the dead paths in which every referrer comes before what it refers to.
    private static List<StorePath> ReferrersFirst(HashSet<StorePath> dead, Dictionary<StorePath, GraphNode> nodes)
    {
        var referrers = Referrers(nodes);
        return Graph.Order(dead.Order(), p => referrers.GetValueOrDefault(p) ?? [], dead);
    }

    /// <summary>Deletes the blobs among <paramref name="candidates"/> that no view names any more.</summary>
    private async Task<long> SweepBlobsAsync(IReadOnlyCollection<NixHash> candidates, CancellationToken cancellationToken)
    {
        var referenced = await metadata.GetReferencedBlobsAsync(candidates, cancellationToken).ConfigureAwait(false);
        long count = 0;
        var gone = candidates.Where(h => !referenced.Contains(h)).ToList();
        foreach (var hash in gone)
        {
            if (await blobs.DeleteAsync(hash, cancellationToken).ConfigureAwait(false))
            {
                count++;
            }
        }

        await RemoveNarFilesAsync(gone, cancellationToken).ConfigureAwait(false);
        return count;
    }

    // Compressed copies kept for HTTP clients go with their blob.
    private async Task RemoveNarFilesAsync(List<NixHash> narHashes, CancellationToken cancellationToken)
    {
        if (narHashes.Count == 0)
        {
            return;
        }

        foreach (var file in await metadata.RemoveNarFilesAsync(narHashes, cancellationToken).ConfigureAwait(false))
        {
            await store.KeptNarFiles.DeleteAsync(file, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Collects every account's view, then sweeps every blob no view names (older than the grace period) and
    /// temporary files left by interrupted uploads. For <c>kiln store gc</c>, with the server stopped.
    /// </summary>
    public async Task<(int Paths, long Bytes, long Blobs)> CollectAllAsync(TimeSpan? blobGrace, CancellationToken cancellationToken, TimeSpan? keepRecent = null)
    {
        var grace = blobGrace ?? options.BlobGracePeriod;
        var paths = 0;
        long bytes = 0;
        foreach (var account in await metadata.ListAccountsAsync(cancellationToken).ConfigureAwait(false))
        {
            var result = await CollectAsync(account.Id, new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), cancellationToken, keepRecent, retention: true).ConfigureAwait(false);
            paths += result.Paths.Count;
            bytes += result.BytesFreed;
        }

        return (paths, bytes, await SweepUnnamedBlobsAsync(grace, cancellationToken).ConfigureAwait(false));
    }

    /// <summary>
    /// Deletes every blob no view names that is older than <paramref name="grace"/> (a blob committed by an upload or
    /// build whose registration failed or never came: AddMultipleToStore aborted, a refused repair), with the
    /// temporary files interrupted uploads left. Safe while the server runs: the listing (long, for a large bucket) is
    /// done without the GC's lock; each batch of candidates is then checked against the metadata and deleted under the
    /// exclusive lock, so a registration (which holds the lock shared from committing its blob until its paths are in)
    /// is either wholly before a batch — and its blob is named — or wholly after it, and commits its blob again.
    /// </summary>
    public async Task<long> SweepUnnamedBlobsAsync(TimeSpan grace, CancellationToken cancellationToken)
    {
        long swept = 0;
        var old = new List<NixHash>();
        await foreach (var blob in blobs.ListAsync(cancellationToken).ConfigureAwait(false))
        {
            if (DateTimeOffset.UtcNow - blob.Written >= grace)
            {
                old.Add(blob.Hash);
            }
        }

        foreach (var batch in old.Chunk(1000))
        {
            swept += await DeleteUnnamedAsync(batch, cancellationToken).ConfigureAwait(false);
        }

        await blobs.CleanAbandonedAsync(grace, cancellationToken).ConfigureAwait(false);
        return swept;
    }

    /// <summary>
    /// Deletes those of <paramref name="candidates"/> no path names (whatever their age): the sweep's step, and what
    /// an upload batch that was never committed does with the blobs it shipped ahead. Returns how many went.
    /// </summary>
    public async Task<int> DeleteUnnamedAsync(IReadOnlyCollection<NixHash> candidates, CancellationToken cancellationToken)
    {
        // Looked at first without the lock, which holds up every registration (on a shared database, every front
        // door's): most candidates are named, and only a batch with some left takes it, to look again.
        var named = await metadata.GetReferencedBlobsAsync(candidates, cancellationToken).ConfigureAwait(false);
        var unnamed = candidates.Where(b => !named.Contains(b)).ToList();
        if (unnamed.Count == 0)
        {
            return 0;
        }

        var exclusive = await gcLock.ExclusiveAsync(cancellationToken).ConfigureAwait(false);
        await using var _ = exclusive.ConfigureAwait(false);
        var referenced = await metadata.GetReferencedBlobsAsync(unnamed, cancellationToken).ConfigureAwait(false);
        var gone = unnamed.Where(b => !referenced.Contains(b)).ToList();
        var deleted = 0;
        foreach (var hash in gone)
        {
            if (await blobs.DeleteAsync(hash, cancellationToken).ConfigureAwait(false))
            {
                deleted++;
            }
        }

        await RemoveNarFilesAsync(gone, cancellationToken).ConfigureAwait(false);
        return deleted;
    }
}
