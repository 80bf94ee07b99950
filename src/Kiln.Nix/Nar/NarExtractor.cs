using System.Text;

namespace Kiln.Nix.Nar;

/// <summary>
/// Unpacks a NAR into a new path on disk, like <c>nix-store --restore</c>, safely. The target must not exist.
/// Everything is created relative to the descriptor of its directory, fresh (<c>mkdirat</c>, <c>symlinkat</c>, and
/// <c>openat</c> with <c>O_CREAT|O_EXCL|O_NOFOLLOW</c>), so a symlink — from the archive or planted by someone else
/// meanwhile — can never redirect a write outside the target; the parser has already refused names with <c>/</c>,
/// <c>.</c>, <c>..</c>, duplicates and unsorted entries. Names are written as the archive's raw bytes. Files get mode
/// 0666 less the umask, plus every execute bit for executables, as Nix's <c>restorePath</c> does.
/// <para>
/// With <c>canonical</c>, the tree comes out as Nix keeps its store: files 0444 (0555 if executable), directories
/// 0555, every modification time 1, as <c>canonicalisePathMetaData</c> leaves them.
/// </para>
/// <para>Use <see cref="Restore"/>, which also removes the partial tree when the archive turns out to be bad.</para>
/// </summary>
public sealed class NarExtractor : INarVisitor, IDisposable
{
    private readonly string _target;

    // Open directories, innermost last; the current entry's name and how to name it in errors.
    private readonly Stack<(int Fd, Func<string> Describe)> _directories = new();
    private byte[] _name;
    private Func<string> _describe;
    private int _file = -1;

    private readonly bool _canonical;

    /// <summary>Extracts the archive's root object to <paramref name="target"/>, which must not exist.</summary>
    public NarExtractor(string target, bool canonical = false)
    {
        ArgumentNullException.ThrowIfNull(target);
        _target = Path.GetFullPath(target);
        _name = Posix.CString(_target);
        _describe = () => _target;
        _canonical = canonical;
    }

    /// <summary>The modification time Nix gives everything in its store.</summary>
    public const long StoreModificationTime = 1;

    /// <summary>Parses <paramref name="nar"/> and unpacks it at <paramref name="target"/>; on any error nothing is left behind.</summary>
    /// <exception cref="NarException">The archive is malformed.</exception>
    /// <exception cref="IOException">The target exists or cannot be written.</exception>
    public static long Restore(Stream nar, string target, NarLimits? limits = null, bool canonical = false)
    {
        ArgumentNullException.ThrowIfNull(target);
        var fullTarget = Path.GetFullPath(target);
        if (Path.Exists(fullTarget) || new FileInfo(fullTarget).LinkTarget is not null)
        {
            throw new IOException($"path '{target}' already exists");
        }

        var extractor = new NarExtractor(fullTarget, canonical);
        try
        {
            var size = NarReading.Parse(nar, extractor, limits);
            extractor.Dispose();
            return size;
        }
        catch
        {
            extractor.Dispose();

            // Only remove what this extraction created: if creating the root failed, whatever is at the target
            // belongs to someone else (another restore of the same path, say).
            if (extractor.CreatedRoot)
            {
                RemovePartial(fullTarget);
            }

            throw;
        }
    }

    /// <summary>Whether the root object was created by this extractor (so a failed extraction may remove it).</summary>
    public bool CreatedRoot { get; private set; }

    private static void RemovePartial(string target)
    {
        try
        {
            DeleteTree(target);
        }
        catch (IOException)
        {
            // Best effort: the original error is what the caller needs to see.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    /// <summary>
    /// Deletes a file, symlink or directory tree, making read-only directories writable first (a store tree is).
    /// Names .NET cannot hold — bytes that are not UTF-8, which a NAR or a build may use — and paths past PATH_MAX are
    /// left to chmod and rm, which take names as bytes; the tree does not leave the file system it is on.
    /// </summary>
    public static void DeleteTree(string path)
    {
        try
        {
            DeleteManaged(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            // Root removes entries from read-only directories as it is, and must not chmod what it removes: a file
            // may be a hard link to a read-only file that stays (an agent's linked inputs), whose mode would change.
            var chmod = Posix.GetEffectiveUserId() == 0 ? "" : "chmod -R u+rwX -- \"$1\" 2> /dev/null; ";
            var start = new System.Diagnostics.ProcessStartInfo("/bin/sh", ["-c", chmod + "rm -rf --one-file-system -- \"$1\"", "sh", path])
            {
                UseShellExecute = false,
            };
            System.Diagnostics.Process? started;
            try
            {
                started = System.Diagnostics.Process.Start(start);
            }
            catch (System.ComponentModel.Win32Exception failed)
            {
                throw new IOException($"cannot remove '{path}': no process to run rm ({failed.Message})", e); // as every other failure here
            }

            using var shell = started ?? throw new IOException($"cannot remove '{path}'", e);
            shell.WaitForExit();
            if (System.IO.Directory.Exists(path) || File.Exists(path))
            {
                throw new IOException($"cannot remove '{path}'", e);
            }
        }
    }

    private static void DeleteManaged(string path)
    {
        var info = new FileInfo(path);
        if (info.LinkTarget is not null || info.Exists)
        {
            info.Delete();
            return;
        }

        if (!System.IO.Directory.Exists(path))
        {
            return;
        }

        MakeWritable(new DirectoryInfo(path));
        System.IO.Directory.Delete(path, recursive: true);

        static void MakeWritable(DirectoryInfo directory)
        {
            directory.UnixFileMode |= UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
            foreach (var sub in directory.EnumerateDirectories("*", new EnumerationOptions { AttributesToSkip = FileAttributes.ReparsePoint, IgnoreInaccessible = false }))
            {
                MakeWritable(sub);
            }
        }
    }

    private int ParentFd => _directories.Count == 0 ? Posix.AtFdCwd : _directories.Peek().Fd;

    public void RegularFile(bool executable, long size, long contentsOffset)
    {
        if (_canonical)
        {
            // Created read-only; the descriptor opened for writing still writes.
            _file = Posix.CreateFileAt(ParentFd, _name, _describe, executable ? 0x16D /* 0555 */ : 0x124 /* 0444 */);
            CreatedRoot = true;
            return;
        }

        _file = Posix.CreateFileAt(ParentFd, _name, _describe);
        CreatedRoot = true;
        if (executable)
        {
            Posix.MakeExecutable(_file, _describe);
        }
    }

    public void Contents(ReadOnlySpan<byte> data) => Posix.WriteAll(_file, data, _describe);

    public void EndRegularFile()
    {
        if (_canonical)
        {
            Posix.SetModificationTime(_file, StoreModificationTime, _describe);
        }

        Posix.Close(_file);
        _file = -1;
    }

    public void Symlink(ReadOnlySpan<byte> target)
    {
        Posix.MakeSymlinkAt(target, ParentFd, _name, _describe);
        CreatedRoot = true;
        if (_canonical)
        {
            Posix.SetModificationTimeNoFollow(ParentFd, _name, StoreModificationTime, _describe);
        }
    }

    public void Directory()
    {
        Posix.MakeDirectoryAt(ParentFd, _name, _describe);
        CreatedRoot = true;
        _directories.Push((Posix.OpenDirectoryAt(ParentFd, _name, _describe), _describe));
    }

    public void Entry(ReadOnlySpan<byte> name)
    {
        var parent = _directories.Peek().Describe;
        var display = Encoding.UTF8.GetString(name);
        _name = Posix.CString(name);
        _describe = () => $"{parent()}/{display}";
    }

    public void EndEntry() { }

    public void EndDirectory()
    {
        var (fd, describe) = _directories.Pop();
        try
        {
            if (_canonical)
            {
                Posix.SetMode(fd, 0x16D /* 0555 */, describe);
                Posix.SetModificationTime(fd, StoreModificationTime, describe);
            }
        }
        finally
        {
            Posix.Close(fd);
        }
    }

    public void Dispose()
    {
        if (_file >= 0)
        {
            Posix.Close(_file);
            _file = -1;
        }

        while (_directories.Count > 0)
        {
            Posix.Close(_directories.Pop().Fd);
        }
    }
}
