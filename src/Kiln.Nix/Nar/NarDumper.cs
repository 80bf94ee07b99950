using System.Text;

namespace Kiln.Nix.Nar;

/// <summary>
/// Serialises a path on the local file system as a NAR, byte-identical to <c>nix-store --dump</c>
/// (Nix's <c>dumpPath</c> in <c>src/libutil/archive.cc</c>): the object at the path itself (a symlink is archived as a
/// symlink, not followed); directory entries in ascending byte order of their names; a regular file is
/// executable when its owner-execute bit is set; other permissions, owners and times are not recorded;
/// sockets, FIFOs and devices are refused. The tree is walked relative to open directory descriptors and never
/// through symlinks, and names are taken as raw bytes, so any name the file system holds is archived exactly.
/// </summary>
public static class NarDumper
{
    /// <summary>
    /// Directories nested deeper than this are refused, as current Nix refuses to dump them (and Kiln's parser and
    /// current Nix would refuse the archive); it also bounds the recursion and the descriptors held open.
    /// </summary>
    public static int MaxDepth => NarLimits.Default.MaxDepth;

    /// <summary>
    /// Writes the NAR of <paramref name="path"/> to <paramref name="output"/> and returns its size in bytes. With
    /// <paramref name="pipelined"/>, reading the tree and writing <paramref name="output"/> run on two threads.
    /// </summary>
    public static long Dump(string path, Stream output, bool pipelined = false)
    {
        using var writer = new NarWriter(output, pipelined: pipelined);
        Dump(path, writer);
        writer.Flush();
        return writer.BytesWritten;
    }

    /// <summary>
    /// Writes the NAR of <paramref name="path"/> to an open file descriptor (stdout, a file, a socket), copying large
    /// files inside the kernel. Returns the NAR's size.
    /// </summary>
    public static long Dump(string path, Microsoft.Win32.SafeHandles.SafeFileHandle output)
    {
        using var writer = new NarWriter(output);
        Dump(path, writer);
        writer.Flush();
        return writer.BytesWritten;
    }

    /// <summary>Writes the object at <paramref name="path"/> (after the magic, which the writer wrote) to <paramref name="writer"/>.</summary>
    public static void Dump(string path, NarWriter writer)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(writer);
        // The directory-reading buffer is the shared pool's, as the writer's is (a NAR is dumped for every build).
        var directoryBuffer = System.Buffers.ArrayPool<byte>.Shared.Rent(64 * 1024);
        try
        {
            new Walker(writer, directoryBuffer).DumpNode(Posix.AtFdCwd, Posix.CString(path), () => path, depth: 0);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(directoryBuffer);
        }
    }

    private sealed class Walker(NarWriter writer, byte[] directoryBuffer)
    {

        // `name` is NUL-terminated and relative to `directory` (or a path relative to the working directory).
        public void DumpNode(int directory, byte[] name, Func<string> describe, int depth)
        {
            if (depth >= MaxDepth)
            {
                throw new IOException($"path '{describe()}' exceeds maximum NAR directory depth of {MaxDepth}");
            }

            var (mode, size) = Posix.LStatAt(directory, name, describe);
            switch (mode & Posix.FileTypeMask)
            {
                case Posix.Regular:
                    {
                        var fd = Posix.OpenFileAt(directory, name, describe);
                        try
                        {
                            writer.RegularFile((mode & Posix.OwnerExecute) != 0, size);
                            writer.CopyFileContents(fd, describe);
                            writer.EndRegularFile();
                        }
                        finally
                        {
                            Posix.Close(fd);
                        }

                        break;
                    }

                case Posix.Symlink:
                    writer.Symlink(Posix.ReadLinkAt(directory, name, describe));
                    break;

                case Posix.Directory:
                    {
                        var fd = Posix.OpenDirectoryAt(directory, name, describe);
                        try
                        {
                            var entries = Posix.ReadDirectory(fd, directoryBuffer, describe);
                            entries.Sort(static (a, b) => a.AsSpan().SequenceCompareTo(b));
                            writer.Directory();
                            foreach (var entry in entries)
                            {
                                writer.Entry(entry);
                                DumpNode(fd, Posix.CString(entry), () => $"{describe()}/{Encoding.UTF8.GetString(entry)}", depth + 1);
                                writer.EndEntry();
                            }

                            writer.EndDirectory();
                        }
                        finally
                        {
                            Posix.Close(fd);
                        }

                        break;
                    }

                default:
                    throw new IOException($"file '{describe()}' has an unsupported type");
            }
        }
    }
}
