using Kiln.Nix.Hashing;

namespace Kiln.Store.Blobs;

/// <summary>
/// Recently used blobs of a remote blob store kept on local disk, bounded in bytes, least recently used first out:
/// <c>&lt;dir&gt;/&lt;2 chars&gt;/&lt;nix32&gt;.nar</c>, files put in place by rename (whole or not at all), spool files
/// under <c>&lt;dir&gt;/tmp</c>. A cached blob is an ordinary local file, so the HTTP cache sends it with sendfile and
/// agents read it without a network round trip. Evicting a file a reader holds open is safe: the reader keeps its
/// open file. The index is rebuilt from the directory at start (last use = the file's modification time).
/// </summary>
public sealed class LocalBlobCache
{
    private readonly string _root;
    private readonly Dictionary<NixHash, (long Length, long LastUse)> _entries = [];
    private readonly Lock _lock = new();
    private long _bytes;
    private long _clock;

    /// <param name="root">The cache's directory (created if missing).</param>
    /// <param name="limit">The most bytes kept; 0 keeps nothing (blobs only pass through the spool).</param>
    public LocalBlobCache(string root, long limit)
    {
        _root = root;
        Limit = limit;
        SpoolDirectory = Path.Combine(root, "tmp");
        Directory.CreateDirectory(SpoolDirectory);
        foreach (var file in Directory.EnumerateFiles(SpoolDirectory))
        {
            File.Delete(file); // a spool left by a server that stopped mid-upload
        }

        var found = new List<(NixHash Hash, long Length, DateTime Written)>();
        foreach (var directory in Directory.EnumerateDirectories(root).Where(d => Path.GetFileName(d) != "tmp"))
        {
            foreach (var file in Directory.EnumerateFiles(directory, "*.nar"))
            {
                if (BlobName(Path.GetFileNameWithoutExtension(file)) is { } hash)
                {
                    var info = new FileInfo(file);
                    found.Add((hash, info.Length, info.LastWriteTimeUtc));
                }
            }
        }

        foreach (var (hash, length, _) in found.OrderBy(f => f.Written))
        {
            _entries[hash] = (length, ++_clock);
            _bytes += length;
        }

        Evict();
    }

    public long Limit { get; }

    /// <summary>The hash a blob file or object is named by (its Nix32 SHA-256), or null for a name that is not a blob's.</summary>
    public static NixHash? BlobName(string name)
    {
        try
        {
            return NixHash.ParseUnprefixed(name, NixHashAlgorithm.Sha256);
        }
        catch (Kiln.Nix.BadHashException)
        {
            return null;
        }
    }

    /// <summary>Where blobs being written or fetched are spooled before they are complete.</summary>
    public string SpoolDirectory { get; }

    /// <summary>Bytes kept now.</summary>
    public long Bytes
    {
        get
        {
            lock (_lock)
            {
                return _bytes;
            }
        }
    }

    /// <summary>A new spool file's path (the caller creates it).</summary>
    public string NewSpoolPath() => Path.Combine(SpoolDirectory, $"{Guid.NewGuid():N}.tmp");

    private string PathOf(NixHash hash)
    {
        var name = hash.ToNix32();
        return Path.Combine(_root, name[..2], name + ".nar");
    }

    /// <summary>The cached blob opened for reading (and marked used), or null when it is not kept here.</summary>
    public FileStream? TryOpen(NixHash hash)
    {
        lock (_lock)
        {
            if (!_entries.TryGetValue(hash, out var entry))
            {
                return null;
            }

            _entries[hash] = (entry.Length, ++_clock);
        }

        try
        {
            return new FileStream(PathOf(hash), FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, bufferSize: 0,
                FileOptions.Asynchronous | FileOptions.SequentialScan);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            Forget(hash); // removed behind the cache's back
            return null;
        }
    }

    public bool Contains(NixHash hash)
    {
        lock (_lock)
        {
            return _entries.ContainsKey(hash);
        }
    }

    /// <summary>Takes a complete spool file as the blob <paramref name="hash"/> (or deletes it when the cache keeps nothing); evicts beyond the limit.</summary>
    public void Adopt(NixHash hash, string spoolFile)
    {
        var length = new FileInfo(spoolFile).Length;
        if (Limit == 0 || length > Limit)
        {
            File.Delete(spoolFile);
            return;
        }

        var target = PathOf(hash);
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        File.SetUnixFileMode(spoolFile, UnixFileMode.UserRead);
        File.Move(spoolFile, target, overwrite: true);
        lock (_lock)
        {
            if (_entries.TryGetValue(hash, out var old))
            {
                _bytes -= old.Length;
            }

            _entries[hash] = (length, ++_clock);
            _bytes += length;
        }

        Evict();
    }

    /// <summary>Drops the blob from the cache (it was deleted from the store).</summary>
    public void Forget(NixHash hash)
    {
        lock (_lock)
        {
            if (_entries.Remove(hash, out var entry))
            {
                _bytes -= entry.Length;
            }
        }

        try
        {
            File.Delete(PathOf(hash));
        }
        catch (IOException)
        {
        }
    }

    private void Evict()
    {
        List<NixHash> victims = [];
        lock (_lock)
        {
            if (_bytes <= Limit)
            {
                return;
            }

            foreach (var (hash, entry) in _entries.OrderBy(e => e.Value.LastUse))
            {
                if (_bytes <= Limit)
                {
                    break;
                }

                victims.Add(hash);
                _bytes -= entry.Length;
            }

            foreach (var hash in victims)
            {
                _entries.Remove(hash);
            }
        }

        foreach (var hash in victims)
        {
            try
            {
                File.Delete(PathOf(hash));
            }
            catch (IOException)
            {
            }
        }
    }
}
