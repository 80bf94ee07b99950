using System.Runtime.InteropServices;

namespace Kiln.Nix.Nar;

/// <summary>
/// The few Linux calls the NAR dumper and extractor need that .NET does not expose: the file type from
/// <c>lstat</c> (to refuse FIFOs and devices without opening them), raw symlink targets, and <c>mkdir</c>/<c>symlink</c>
/// that fail when the name already exists instead of following what is there. <c>statx</c>'s layout is the same
/// on every Linux architecture, unlike <c>struct stat</c>.
/// </summary>
internal static partial class Posix
{
    private const int AtFdCwd = -100;
    private const int AtSymlinkNoFollow = 0x100;
    private const uint StatxType = 0x1;
    private const uint StatxMode = 0x2;
    private const uint StatxSize = 0x200;

    internal const int FileTypeMask = 0xF000; // S_IFMT
    internal const int Regular = 0x8000;
    internal const int Directory = 0x4000;
    internal const int Symlink = 0xA000;
    internal const int OwnerExecute = 0x40; // S_IXUSR

    [StructLayout(LayoutKind.Explicit, Size = 256)]
    internal struct StatxBuffer
    {
        [FieldOffset(28)]
        public ushort Mode;

        [FieldOffset(40)]
        public ulong Size;
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int StatxNative(int dirfd, string path, int flags, uint mask, out StatxBuffer buffer);

    [LibraryImport("libc", EntryPoint = "readlink", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint ReadlinkNative(string path, Span<byte> buffer, nint size);

    [LibraryImport("libc", EntryPoint = "mkdir", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int MkdirNative(string path, uint mode);

    [LibraryImport("libc", EntryPoint = "symlink", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SymlinkNative(ReadOnlySpan<byte> target, string linkPath);

    /// <summary>lstat: the object itself, not what a symlink points to.</summary>
    internal static (int Mode, long Size) LStat(string path)
    {
        if (StatxNative(AtFdCwd, path, AtSymlinkNoFollow, StatxType | StatxMode | StatxSize, out var buffer) != 0)
        {
            throw Failure("getting status of", path);
        }

        return (buffer.Mode, (long)buffer.Size);
    }

    /// <summary>The raw bytes of a symlink's target.</summary>
    internal static byte[] ReadLink(string path)
    {
        var buffer = new byte[4096];
        while (true)
        {
            var length = ReadlinkNative(path, buffer, buffer.Length);
            if (length < 0)
            {
                throw Failure("reading symbolic link", path);
            }

            if (length < buffer.Length)
            {
                return buffer.AsSpan(0, (int)length).ToArray();
            }

            buffer = new byte[buffer.Length * 2];
        }
    }

    /// <summary>Creates a directory; fails if anything already has that name.</summary>
    internal static void MakeDirectory(string path)
    {
        if (MkdirNative(path, Convert.ToUInt32("777", 8)) != 0)
        {
            throw Failure("creating directory", path);
        }
    }

    /// <summary>Creates a symlink holding exactly <paramref name="target"/>; fails if anything already has that name.</summary>
    internal static void MakeSymlink(ReadOnlySpan<byte> target, string path)
    {
        Span<byte> terminated = stackalloc byte[target.Length + 1];
        target.CopyTo(terminated);
        terminated[^1] = 0;
        if (SymlinkNative(terminated, path) != 0)
        {
            throw Failure("creating symlink", path);
        }
    }

    private static IOException Failure(string action, string path)
    {
        var errno = Marshal.GetLastPInvokeError();
        return new IOException($"{action} '{path}': {Marshal.GetPInvokeErrorMessage(errno)}", errno);
    }
}
