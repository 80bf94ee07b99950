using System.Collections.Concurrent;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;

namespace Kiln.Agent;

/// <summary>
/// Store contents unpacked once for all builds: <c>DIR/&lt;2&gt;/&lt;nix32 NAR hash&gt;</c>, canonical (read-only,
/// mtime 1), bind-mounted read-only into every sandbox that needs them. Keyed by NAR hash, not store path, so
/// accounts holding different contents under one path never see each other's, and identical contents are unpacked
/// once. An entry appears whole (unpacked beside its final name, then renamed) or not at all, and goes (pruned) once
/// the store no longer holds its NAR and no build uses it.
/// </summary>
internal sealed class InputCache(string root, IAgentStore store)
{
    private readonly ConcurrentDictionary<NixHash, Lazy<Task<string>>> _pending = new();

    // How many running builds use each entry (taken before an entry is looked at, so a prune never removes one a
    // build is about to mount); guarded by itself.
    private readonly Dictionary<NixHash, int> _inUse = [];

    public string Root => root;

    public string TreeOf(NixHash narHash)
    {
        var name = narHash.ToNix32();
        return Path.Combine(root, name[..2], name);
    }

    /// <summary>Marks entries as used by a build until the returned lease is disposed: they are not pruned meanwhile.</summary>
    public IDisposable Use(IReadOnlyCollection<NixHash> narHashes)
    {
        lock (_inUse)
        {
            foreach (var hash in narHashes)
            {
                _inUse[hash] = _inUse.GetValueOrDefault(hash) + 1;
            }
        }

        return new Lease(() =>
        {
            lock (_inUse)
            {
                foreach (var hash in narHashes)
                {
                    if (--_inUse[hash] == 0)
                    {
                        _inUse.Remove(hash);
                    }
                }
            }
        });
    }

    /// <summary>
    /// Removes the entries whose NAR the store no longer holds (collected with the last path naming it) and that no
    /// build uses, with what interrupted unpacks left; returns how many entries went.
    /// </summary>
    public async Task<int> PruneAsync(CancellationToken cancellationToken)
    {
        var pruned = 0;
        if (!Directory.Exists(root))
        {
            return 0;
        }

        foreach (var entry in Directory.EnumerateDirectories(root).SelectMany(d => Directory.EnumerateFileSystemEntries(d)).ToList())
        {
            var name = Path.GetFileName(entry);
            if (name.Length != Nix32.EncodedLength(32) || !name.All(Nix32.IsDigit))
            {
                continue; // an unpack in progress (.tmp-…), or not Kiln's
            }

            var hash = NixHash.ParseUnprefixed(name, NixHashAlgorithm.Sha256);
            if (await store.HasNarAsync(hash, cancellationToken).ConfigureAwait(false))
            {
                continue;
            }

            // Out of the way first, under the lock builds take entries with, then deleted at leisure.
            var doomed = Path.Combine(Path.GetDirectoryName(entry)!, $".gone-{Guid.NewGuid():N}");
            lock (_inUse)
            {
                if (_inUse.ContainsKey(hash) || !Native.Rename(entry, doomed))
                {
                    continue;
                }
            }

            NarExtractor.DeleteTree(doomed);
            pruned++;
        }

        return pruned;
    }

    /// <summary>Deletes what unpacks and prunes a crash interrupted (only while no build runs: at start).</summary>
    public void DeleteLeftovers()
    {
        if (!Directory.Exists(root))
        {
            return;
        }

        foreach (var left in Directory.EnumerateDirectories(root).SelectMany(d => Directory.EnumerateFileSystemEntries(d, ".*")).ToList())
        {
            NarExtractor.DeleteTree(left);
        }
    }

    private sealed class Lease(Action release) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                release();
            }
        }
    }

    /// <summary>The unpacked tree of the NAR with this hash, unpacking it first if needed.</summary>
    public Task<string> EnsureAsync(NixHash narHash)
    {
        var path = TreeOf(narHash);
        if (StorePathGraph.ExistsNoFollow(path))
        {
            return Task.FromResult(path);
        }

        var lazy = _pending.GetOrAdd(narHash, h => new Lazy<Task<string>>(() => Task.Run(() => UnpackAsync(h, path))));
        return lazy.Value.ContinueWith(t =>
        {
            _pending.TryRemove(narHash, out _);
            return t;
        }, TaskScheduler.Default).Unwrap();
    }

    /// <summary>Takes a canonical output tree the agent just built and stored as this NAR (it moves, or stays where it is).</summary>
    public void Adopt(NixHash narHash, string tree)
    {
        var path = TreeOf(narHash);
        if (StorePathGraph.ExistsNoFollow(path))
        {
            return;
        }

        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        // Fails harmlessly when another build adopted it first, when it is on another file system, or when moving a
        // read-only directory to another parent is not allowed (not root): it is unpacked when needed instead.
        _ = Native.Rename(tree, path);
    }

    private async Task<string> UnpackAsync(NixHash narHash, string path)
    {
        if (StorePathGraph.ExistsNoFollow(path))
        {
            return path;
        }

        var parent = Path.GetDirectoryName(path)!;
        Directory.CreateDirectory(parent);
        // Beside the final name, so the rename does not move a read-only directory to another parent.
        var temp = Path.Combine(parent, $".tmp-{Guid.NewGuid():N}");
        try
        {
            var nar = await store.OpenNarAsync(narHash, CancellationToken.None).ConfigureAwait(false);
            await using (nar.ConfigureAwait(false))
            {
                NarExtractor.Restore(new BufferedStream(nar, 256 * 1024), temp, canonical: true);
            }

            if (!Native.Rename(temp, path) && !StorePathGraph.ExistsNoFollow(path))
            {
                throw new IOException($"cannot move an unpacked input into place at '{path}'");
            }
        }
        finally
        {
            if (StorePathGraph.ExistsNoFollow(temp))
            {
                NarExtractor.DeleteTree(temp);
            }
        }

        return path;
    }
}
