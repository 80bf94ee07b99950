using System.Collections.Concurrent;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;

namespace Kiln.Agent;

/// <summary>
/// Store contents unpacked once for all builds: <c>DIR/&lt;2&gt;/&lt;nix32 NAR hash&gt;</c>, canonical (read-only,
/// mtime 1), bind-mounted read-only into every sandbox that needs them. Keyed by NAR hash, not store path, so
/// accounts holding different contents under one path never see each other's, and identical contents are unpacked
/// once. An entry appears whole (unpacked beside its final name, then renamed) or not at all.
/// </summary>
internal sealed class InputCache(string root, IAgentStore store)
{
    private readonly ConcurrentDictionary<NixHash, Lazy<Task<string>>> _pending = new();

    public string Root => root;

    public string TreeOf(NixHash narHash)
    {
        var name = narHash.ToNix32();
        return Path.Combine(root, name[..2], name);
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
