using System.Collections.Concurrent;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;

namespace Kiln.Agent;

/// <summary>
/// Store contents unpacked once for all builds: <c>DIR/&lt;2&gt;/&lt;nix32 NAR hash&gt;</c>, canonical (read-only,
/// mtime 1), bind-mounted read-only into every sandbox that needs them. Keyed by NAR hash, not store path, so
/// accounts holding different contents under one path never see each other's, and identical contents are unpacked
/// once. An entry appears whole (unpacked beside its final name, then renamed) or not at all, and goes (pruned) once
/// the store no longer holds its NAR and no build uses it, or (trimmed) when the cache is over its size bound and no
/// build has used it for longest.
/// </summary>
internal sealed class InputCache(string root, IAgentStore store, LinkedInputPool? copies = null)
{
    private readonly ConcurrentDictionary<NixHash, Lazy<Task<string>>> _pending = new();

    // Each entry's size (its NAR's, or its files' for one found at start) and when a build last took it (a counter).
    private readonly ConcurrentDictionary<NixHash, (long Size, long Used)> _entries = new();
    private long _clock;
    private long _bytes;

    /// <summary>The bytes of the entries (by NAR size), as far as this process has seen them.</summary>
    public long Bytes => Interlocked.Read(ref _bytes);

    // How many running builds use each entry (taken before an entry is looked at, so a prune never removes one a
    // build is about to mount); guarded by itself.
    private readonly Dictionary<NixHash, int> _inUse = [];

    public string Root => root;

    public string TreeOf(NixHash narHash)
    {
        var name = narHash.ToNix32();
        return Path.Combine(root, name[..2], name);
    }

    /// <summary>
    /// Marks entries (by NAR hash, with their NAR sizes) as used by a build until the returned lease is disposed: they
    /// are not pruned or trimmed meanwhile, and are the most recently used.
    /// </summary>
    public IDisposable Use(IReadOnlyCollection<(NixHash NarHash, long NarSize)> inputs)
    {
        var narHashes = inputs.Select(i => i.NarHash).ToList();
        lock (_inUse)
        {
            var now = ++_clock;
            foreach (var (hash, size) in inputs)
            {
                _inUse[hash] = _inUse.GetValueOrDefault(hash) + 1;
                Track(hash, size, now);
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

        foreach (var (hash, entry) in Entries().ToList())
        {
            if (!await store.HasNarAsync(hash, cancellationToken).ConfigureAwait(false) && TryRemove(hash, entry))
            {
                pruned++;
            }
        }

        return pruned;
    }

    // Counts an entry (once; a later sighting only refreshes when it was used). Called under the in-use lock.
    private void Track(NixHash hash, long size, long used)
    {
        _entries.AddOrUpdate(hash, _ =>
        {
            Interlocked.Add(ref _bytes, size);
            return (size, used);
        }, (_, old) => (old.Size, Math.Max(old.Used, used)));
    }

    private void Forget(NixHash hash)
    {
        if (_entries.TryRemove(hash, out var gone))
        {
            Interlocked.Add(ref _bytes, -gone.Size);
        }
    }

    /// <summary>Counts the entries a previous run left (as least recently used), so the size bound covers them too.</summary>
    public void Index()
    {
        if (!Directory.Exists(root))
        {
            return;
        }

        foreach (var (hash, entry) in Entries())
        {
            var size = Directory.Exists(entry)
                ? new DirectoryInfo(entry).EnumerateFiles("*", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = 0 }).Sum(f => f.Length)
                : new FileInfo(entry).Length;
            lock (_inUse)
            {
                Track(hash, size, 0);
            }
        }
    }

    // The entries on disk, by NAR hash (skipping unpacks in progress, .tmp-…, entries on their way out, and anything not Kiln's).
    private IEnumerable<(NixHash Hash, string Path)> Entries() =>
        Directory.EnumerateDirectories(root).SelectMany(d => Directory.EnumerateFileSystemEntries(d))
            .Select(entry => (Name: Path.GetFileName(entry), Entry: entry))
            .Where(e => e.Name.Length == Nix32.EncodedLength(32) && e.Name.All(Nix32.IsDigit))
            .Select(e => (NixHash.ParseUnprefixed(e.Name, NixHashAlgorithm.Sha256), e.Entry));

    // Removes an entry no build uses: out of the way first, under the lock builds take entries with, then deleted
    // at leisure. False when a build uses it or it could not be moved (one that is gone already is forgotten).
    private bool TryRemove(NixHash hash, string entry)
    {
        var doomed = Path.Combine(Path.GetDirectoryName(entry)!, $".gone-{Guid.NewGuid():N}");
        IReadOnlyList<string> linked;
        lock (_inUse)
        {
            if (_inUse.ContainsKey(hash))
            {
                return false;
            }

            if (!Native.Rename(entry, doomed))
            {
                if (!StorePathGraph.ExistsNoFollow(entry))
                {
                    Forget(hash); // gone already (it never got there, or was removed meanwhile)
                }

                return false;
            }

            Forget(hash);

            // Its linked copies hold its files' inodes: they go with it.
            linked = copies?.Detach(hash) ?? [];
        }

        LinkedInputPool.Delete(linked);

        // The entry is out of the cache already. What cannot be deleted now is a leftover the next start deletes
        // (DeleteLeftovers): trimming runs after every build, and must never turn its outcome into a failure of Kiln's.
        SandboxExecutor.DeleteBuildDirectory(doomed);
        return true;
    }

    /// <summary>
    /// Removes the least recently used entries no build uses until the cache holds at most <paramref name="maxBytes"/>
    /// (0: no bound); returns how many went.
    /// </summary>
    public int Trim(long maxBytes)
    {
        var trimmed = 0;
        if (maxBytes <= 0 || Bytes <= maxBytes)
        {
            return 0;
        }

        foreach (var (hash, _) in _entries.OrderBy(e => e.Value.Used).ToList())
        {
            if (Bytes <= maxBytes)
            {
                break;
            }

            if (TryRemove(hash, TreeOf(hash)))
            {
                trimmed++;
            }
        }

        return trimmed;
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
    public void Adopt(NixHash narHash, long narSize, string tree)
    {
        var path = TreeOf(narHash);
        if (StorePathGraph.ExistsNoFollow(path))
        {
            return;
        }

        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        // Fails harmlessly when another build adopted it first, when it is on another file system, or when moving a
        // read-only directory to another parent is not allowed (not root): it is unpacked when needed instead.
        if (Native.Rename(tree, path))
        {
            lock (_inUse)
            {
                Track(narHash, narSize, ++_clock);
            }
        }
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
