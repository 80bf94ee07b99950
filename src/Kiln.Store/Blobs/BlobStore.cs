using Kiln.Nix.Hashing;

namespace Kiln.Store.Blobs;

/// <summary>
/// NAR content, stored once per NAR hash in a directory: <c>blobs/&lt;2 chars&gt;/&lt;nix32 sha256&gt;.nar</c>. A blob is
/// written to <c>blobs/tmp/</c> while it is hashed and checked, and only then renamed into place (an atomic rename on
/// one file system), so a blob at its name is always complete and correct. If the blob already exists the new copy
/// is dropped: content is deduplicated across every path and account.
/// </summary>
public sealed class BlobStore
{
    private readonly string _root;
    private readonly string _temp;
    private readonly bool _fsync;

    public BlobStore(string root, bool fsync)
    {
        _root = root;
        _temp = Path.Combine(root, "tmp");
        _fsync = fsync;
        Directory.CreateDirectory(_temp);
    }

    /// <summary>The directory blobs live in.</summary>
    public string Root => _root;

    /// <summary>Where the blob of <paramref name="narHash"/> lives (whether or not it exists).</summary>
    public string PathOf(NixHash narHash)
    {
        var name = narHash.ToNix32();
        return Path.Combine(_root, name[..2], name + ".nar");
    }

    public bool Exists(NixHash narHash) => File.Exists(PathOf(narHash));

    /// <summary>
    /// A new temporary file for an upload in progress. Unbuffered and synchronous: callers write large chunks, and on
    /// Linux .NET's asynchronous file writes only move the same write to another thread.
    /// </summary>
    public FileStream CreateTemp(out string path)
    {
        path = Path.Combine(_temp, $"{Guid.NewGuid():N}.tmp");
        return new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            Share = FileShare.None,
            BufferSize = 0,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
    }

    /// <summary>Flushes a finished temporary file to disk when durability is asked for.</summary>
    public void Seal(FileStream temp)
    {
        ArgumentNullException.ThrowIfNull(temp);
        temp.Flush(flushToDisk: _fsync);
    }

    /// <summary>Moves a verified temporary file into place, or drops it when that content is already stored.</summary>
    public void Commit(string tempPath, NixHash narHash)
    {
        var target = PathOf(narHash);
        if (File.Exists(target))
        {
            File.Delete(tempPath);
            return;
        }

        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        File.SetUnixFileMode(tempPath, UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        File.Move(tempPath, target, overwrite: true);
    }

    public static void DeleteTemp(string tempPath)
    {
        try
        {
            File.Delete(tempPath);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Deletes a blob (the garbage collector does, once nothing names it).</summary>
    public void Delete(NixHash narHash) => File.Delete(PathOf(narHash));

    /// <summary>Every stored blob, with its hash as its name says and its file's age.</summary>
    public IEnumerable<(NixHash Hash, string Path, DateTime Modified)> Enumerate()
    {
        foreach (var directory in Directory.EnumerateDirectories(_root))
        {
            if (Path.GetFileName(directory) == "tmp")
            {
                continue;
            }

            foreach (var file in Directory.EnumerateFiles(directory, "*.nar"))
            {
                var name = Path.GetFileNameWithoutExtension(file);
                NixHash hash;
                try
                {
                    hash = NixHash.ParseUnprefixed(name, NixHashAlgorithm.Sha256);
                }
                catch (Kiln.Nix.BadHashException)
                {
                    continue; // not a blob of ours
                }

                yield return (hash, file, File.GetLastWriteTimeUtc(file));
            }
        }
    }

    /// <summary>Removes temporary files left by uploads that were interrupted (older than <paramref name="age"/>).</summary>
    public int CleanTemp(TimeSpan age)
    {
        var removed = 0;
        foreach (var file in Directory.EnumerateFiles(_temp))
        {
            if (DateTime.UtcNow - File.GetLastWriteTimeUtc(file) >= age)
            {
                DeleteTemp(file);
                removed++;
            }
        }

        return removed;
    }
}
