using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Kiln.Nix.Nar;

/// <summary>
/// Unpacks a NAR into a new path on disk, like <c>nix-store --restore</c>, safely: the target must not exist;
/// every file, directory and symlink is created fresh (never opened if something is already there), so a
/// symlink in the archive can never redirect a later write outside the target — the parser has already
/// refused names with <c>/</c>, <c>.</c>, <c>..</c>, duplicates and unsorted entries. Executable files get mode 0777
/// and others 0666, less the umask (execute bits are then added for all, as Nix does).
/// <para>Use <see cref="Restore"/>, which also removes the partial tree when the archive turns out to be bad.</para>
/// </summary>
public sealed class NarExtractor : INarVisitor, IDisposable
{
    private static readonly UTF8Encoding StrictUtf8 = new(false, true);

    private readonly Stack<string> _directories = new();
    private string _current;
    private SafeFileHandle? _file;
    private long _fileOffset;

    /// <summary>Extracts the archive's root object to <paramref name="target"/>, which must not exist.</summary>
    public NarExtractor(string target)
    {
        ArgumentNullException.ThrowIfNull(target);
        _current = Path.GetFullPath(target);
    }

    /// <summary>Parses <paramref name="nar"/> and unpacks it at <paramref name="target"/>; on any error nothing is left behind.</summary>
    /// <exception cref="NarException">The archive is malformed.</exception>
    /// <exception cref="IOException">The target exists or cannot be written.</exception>
    public static long Restore(Stream nar, string target, NarLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(target);
        var fullTarget = Path.GetFullPath(target);
        if (Path.Exists(fullTarget) || File.Exists(fullTarget) || System.IO.Directory.Exists(fullTarget) || new FileInfo(fullTarget).LinkTarget is not null)
        {
            throw new IOException($"path '{target}' already exists");
        }

        var extractor = new NarExtractor(fullTarget);
        try
        {
            return NarReading.Parse(nar, extractor, limits);
        }
        catch
        {
            extractor.Dispose();
            RemovePartial(fullTarget);
            throw;
        }
        finally
        {
            extractor.Dispose();
        }
    }

    private static void RemovePartial(string target)
    {
        try
        {
            var info = new FileInfo(target);
            if (info.LinkTarget is not null || info.Exists)
            {
                info.Delete();
            }
            else if (System.IO.Directory.Exists(target))
            {
                System.IO.Directory.Delete(target, recursive: true);
            }
        }
        catch (IOException)
        {
            // Best effort: the original error is what the caller needs to see.
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    public void RegularFile(bool executable, long size, long contentsOffset)
    {
        // CreateNew is O_CREAT|O_EXCL: it fails on anything already there, including a dangling symlink.
        // No preallocation: a hostile archive could announce a huge size and then stop.
        _file = File.OpenHandle(_current, FileMode.CreateNew, FileAccess.Write, FileShare.None);
        _fileOffset = 0;
        if (executable)
        {
            // Created as 0666 & ~umask; like Nix's restorePath, add every execute bit.
            var mode = File.GetUnixFileMode(_file);
            File.SetUnixFileMode(_file, mode | UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute);
        }
    }

    public void Contents(ReadOnlySpan<byte> data)
    {
        RandomAccess.Write(_file!, data, _fileOffset);
        _fileOffset += data.Length;
    }

    public void EndRegularFile()
    {
        _file!.Dispose();
        _file = null;
    }

    public void Symlink(ReadOnlySpan<byte> target) => Posix.MakeSymlink(target, _current);

    public void Directory() => Posix.MakeDirectory(_current);

    public void Entry(ReadOnlySpan<byte> name)
    {
        string decoded;
        try
        {
            decoded = StrictUtf8.GetString(name);
        }
        catch (DecoderFallbackException)
        {
            throw new IOException($"cannot restore the entry '{NarParser.Printable(name)}' in '{_current}': its name is not valid UTF-8");
        }

        _directories.Push(_current);
        _current = Path.Join(_current, decoded);
    }

    public void EndEntry() => _current = _directories.Pop();

    public void EndDirectory() { }

    public void Dispose()
    {
        _file?.Dispose();
        _file = null;
    }
}
