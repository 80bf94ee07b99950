using System.IO.Enumeration;
using System.Text;

namespace Kiln.Nix.Nar;

/// <summary>
/// Serialises a path on the local file system as a NAR, byte-identical to <c>nix-store --dump</c>
/// (Nix's <c>dumpPath</c> in <c>src/libutil/archive.cc</c>): the object at the path itself (a symlink is archived as a
/// symlink, not followed); directory entries in ascending byte order of their names; a regular file is
/// executable when its owner-execute bit is set; other permissions, owners and times are not recorded;
/// sockets, FIFOs and devices are refused.
/// <para>Names are read through .NET, which decodes them as UTF-8: a name that is not valid UTF-8 cannot be archived faithfully.</para>
/// </summary>
public static class NarDumper
{
    /// <summary>Writes the NAR of <paramref name="path"/> to <paramref name="output"/> and returns its size in bytes.</summary>
    public static long Dump(string path, Stream output)
    {
        using var writer = new NarWriter(output);
        Dump(path, writer);
        writer.Flush();
        return writer.BytesWritten;
    }

    /// <summary>Writes the object at <paramref name="path"/> (without the magic, which the writer wrote) to <paramref name="writer"/>.</summary>
    public static void Dump(string path, NarWriter writer)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(writer);
        DumpNode(path, writer);
    }

    private static void DumpNode(string path, NarWriter writer)
    {
        var (mode, size) = Posix.LStat(path);
        switch (mode & Posix.FileTypeMask)
        {
            case Posix.Regular:
                using (var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, FileOptions.SequentialScan))
                {
                    writer.RegularFile((mode & Posix.OwnerExecute) != 0, size);
                    writer.CopyContents(handle, path);
                    writer.EndRegularFile();
                }

                break;

            case Posix.Symlink:
                writer.Symlink(Posix.ReadLink(path));
                break;

            case Posix.Directory:
                writer.Directory();
                foreach (var (name, bytes) in SortedEntries(path))
                {
                    writer.Entry(bytes);
                    DumpNode(Path.Join(path, name), writer);
                    writer.EndEntry();
                }

                writer.EndDirectory();
                break;

            default:
                throw new IOException($"file '{path}' has an unsupported type");
        }
    }

    // Entry names sorted as Nix sorts them: by their bytes.
    private static List<(string Name, byte[] Bytes)> SortedEntries(string directory)
    {
        var entries = new List<(string Name, byte[] Bytes)>();
        var options = new EnumerationOptions
        {
            AttributesToSkip = 0,
            IgnoreInaccessible = false,
            RecurseSubdirectories = false,
            ReturnSpecialDirectories = false,
        };
        var names = new FileSystemEnumerable<string>(directory, static (ref FileSystemEntry entry) => entry.FileName.ToString(), options);
        foreach (var name in names)
        {
            entries.Add((name, Encoding.UTF8.GetBytes(name)));
        }

        entries.Sort(static (a, b) => a.Bytes.AsSpan().SequenceCompareTo(b.Bytes));
        return entries;
    }
}
