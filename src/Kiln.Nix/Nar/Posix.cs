using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Kiln.Nix.Nar;

/// <summary>
/// The Linux calls the NAR dumper and extractor use directly. .NET's file APIs add <c>fstat</c>, <c>flock</c> and
/// <c>fadvise</c> calls per file, decode names as UTF-16, and cannot tell a FIFO from a file without opening it;
/// archiving a tree of small files is dominated by those calls, so the dumper walks the tree with <c>openat</c>,
/// <c>getdents64</c>, <c>statx</c> and <c>read</c> relative to directory descriptors, with names as raw bytes.
/// <c>statx</c> and <c>linux_dirent64</c> have the same layout on every Linux architecture, unlike <c>struct stat</c>.
/// </summary>
internal static partial class Posix
{
    internal const int AtFdCwd = -100;
    private const int AtSymlinkNoFollow = 0x100;
    private const uint StatxType = 0x1;
    private const uint StatxMode = 0x2;
    private const uint StatxSize = 0x200;
    private const int ORdOnly = 0;
    private const int ONonBlock = 0x800; // a FIFO swapped in after statx must not block the open
    private const int OCloExec = 0x80000;
    private const int EIntr = 4;

    internal const int FileTypeMask = 0xF000; // S_IFMT
    internal const int Regular = 0x8000;
    internal const int Directory = 0x4000;
    internal const int Symlink = 0xA000;
    internal const int OwnerExecute = 0x40; // S_IXUSR

    // O_DIRECTORY and O_NOFOLLOW are 0x10000/0x20000 in Linux's generic headers (x86, x86_64, s390x, riscv64,
    // loongarch64) but 0x4000/0x8000 on arm, aarch64 and powerpc.
    private static readonly (int Directory, int NoFollow) OpenFlags =
        RuntimeInformation.ProcessArchitecture is Architecture.Arm64 or Architecture.Arm or Architecture.Ppc64le
            ? (0x4000, 0x8000)
            : (0x10000, 0x20000);

    [StructLayout(LayoutKind.Explicit, Size = 256)]
    internal struct StatxBuffer
    {
        [FieldOffset(20)]
        public uint Uid;

        [FieldOffset(24)]
        public uint Gid;

        [FieldOffset(28)]
        public ushort Mode;

        [FieldOffset(32)]
        public ulong Inode;

        [FieldOffset(40)]
        public ulong Size;

        [FieldOffset(136)]
        public uint DeviceMajor;

        [FieldOffset(140)]
        public uint DeviceMinor;
    }

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true)]
    private static partial int StatxNative(int dirfd, ReadOnlySpan<byte> path, int flags, uint mask, out StatxBuffer buffer);

    [LibraryImport("libc", EntryPoint = "openat", SetLastError = true)]
    private static partial int OpenAtNative(int dirfd, ReadOnlySpan<byte> path, int flags);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int CloseNative(int fd);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint ReadNative(int fd, Span<byte> buffer, nint count);

    [LibraryImport("libc", EntryPoint = "getdents64", SetLastError = true)]
    private static partial nint GetDents64Native(int fd, Span<byte> buffer, nint count);

    [LibraryImport("libc", EntryPoint = "readlinkat", SetLastError = true)]
    private static partial nint ReadLinkAtNative(int dirfd, ReadOnlySpan<byte> path, Span<byte> buffer, nint size);

    [LibraryImport("libc", EntryPoint = "mkdirat", SetLastError = true)]
    private static partial int MkdirAtNative(int dirfd, ReadOnlySpan<byte> path, uint mode);

    [LibraryImport("libc", EntryPoint = "symlinkat", SetLastError = true)]
    private static partial int SymlinkAtNative(ReadOnlySpan<byte> target, int dirfd, ReadOnlySpan<byte> linkPath);

    [LibraryImport("libc", EntryPoint = "openat", SetLastError = true)]
    private static partial int OpenAtModeNative(int dirfd, ReadOnlySpan<byte> path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint WriteNative(int fd, ReadOnlySpan<byte> buffer, nint count);

    [LibraryImport("libc", EntryPoint = "sendfile", SetLastError = true)]
    private static partial nint SendFileNative(int outFd, int inFd, ref long offset, nint count);

    [LibraryImport("libc", EntryPoint = "futimens", SetLastError = true)]
    private static partial int FutimensNative(int fd, ReadOnlySpan<long> times);

    [LibraryImport("libc", EntryPoint = "utimensat", SetLastError = true)]
    private static partial int UtimensatNative(int dirfd, ReadOnlySpan<byte> path, ReadOnlySpan<long> times, int flags);

    [LibraryImport("libc", EntryPoint = "fchmod", SetLastError = true)]
    private static partial int FchmodNative(int fd, uint mode);

    [LibraryImport("libc", EntryPoint = "fchmodat", SetLastError = true)]
    private static partial int FchmodatNative(int dirfd, ReadOnlySpan<byte> path, uint mode, int flags);

    [LibraryImport("libc", EntryPoint = "fchownat", SetLastError = true)]
    private static partial int FchownatNative(int dirfd, ReadOnlySpan<byte> path, uint owner, uint group, int flags);

    [LibraryImport("libc", EntryPoint = "geteuid")]
    internal static partial uint GetEffectiveUserId();

    [LibraryImport("libc", EntryPoint = "getegid")]
    internal static partial uint GetEffectiveGroupId();

    /// <summary>NUL-terminates a name or path for the native calls.</summary>
    /// <summary>A path as the C string system calls take.</summary>
    internal static byte[] CString(string path) => CString(Encoding.UTF8.GetBytes(path));

    internal static byte[] CString(ReadOnlySpan<byte> bytes)
    {
        var result = new byte[bytes.Length + 1];
        bytes.CopyTo(result);
        return result;
    }

    /// <summary>lstat of <paramref name="name"/> relative to <paramref name="dirfd"/>: the object itself, not what a symlink points to.</summary>
    internal static (int Mode, long Size) LStatAt(int dirfd, byte[] name, Func<string> describe)
    {
        if (StatxNative(dirfd, name, AtSymlinkNoFollow, StatxType | StatxMode | StatxSize, out var buffer) != 0)
        {
            throw Failure("getting status of", describe());
        }

        return (buffer.Mode, (long)buffer.Size);
    }

    /// <summary>Opens a directory (never through a symlink).</summary>
    internal static int OpenDirectoryAt(int dirfd, byte[] name, Func<string> describe) =>
        OpenAt(dirfd, name, ORdOnly | OpenFlags.Directory | OpenFlags.NoFollow | OCloExec, "opening directory", describe);

    /// <summary>Opens a regular file for reading (never through a symlink).</summary>
    internal static int OpenFileAt(int dirfd, byte[] name, Func<string> describe) =>
        OpenAt(dirfd, name, ORdOnly | OpenFlags.NoFollow | OCloExec | ONonBlock, "opening file", describe);

    private static int OpenAt(int dirfd, byte[] name, int flags, string action, Func<string> describe)
    {
        while (true)
        {
            var fd = OpenAtNative(dirfd, name, flags);
            if (fd >= 0)
            {
                return fd;
            }

            if (Marshal.GetLastPInvokeError() != EIntr)
            {
                throw Failure(action, describe());
            }
        }
    }

    internal static void Close(int fd) => CloseNative(fd);

    /// <summary>Reads up to <paramref name="buffer"/>.Length bytes; 0 at end of file.</summary>
    internal static int Read(int fd, Span<byte> buffer, Func<string> describe)
    {
        while (true)
        {
            var read = ReadNative(fd, buffer, buffer.Length);
            if (read >= 0)
            {
                return (int)read;
            }

            if (Marshal.GetLastPInvokeError() != EIntr)
            {
                throw Failure("reading file", describe());
            }
        }
    }

    /// <summary>The entries of an open directory, without <c>.</c> and <c>..</c>, as raw names.</summary>
    internal static List<byte[]> ReadDirectory(int fd, byte[] scratch, Func<string> describe) => ReadDirectoryUpTo(fd, scratch, int.MaxValue, describe)!;

    /// <summary>As <see cref="ReadDirectory"/>, or null as soon as there are more than <paramref name="maxNames"/> entries.</summary>
    internal static List<byte[]>? ReadDirectoryUpTo(int fd, byte[] scratch, int maxNames, Func<string> describe)
    {
        var names = new List<byte[]>();
        while (true)
        {
            var length = GetDents64Native(fd, scratch, scratch.Length);
            if (length < 0)
            {
                if (Marshal.GetLastPInvokeError() == EIntr)
                {
                    continue;
                }

                throw Failure("reading directory", describe());
            }

            if (length == 0)
            {
                return names;
            }

            // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            for (var offset = 0; offset < length;)
            {
                var recordLength = BinaryPrimitives.ReadUInt16LittleEndian(scratch.AsSpan(offset + 16));
                var nameBytes = scratch.AsSpan(offset + 19, recordLength - 19);
                var name = nameBytes[..nameBytes.IndexOf((byte)0)];
                if (!name.SequenceEqual("."u8) && !name.SequenceEqual(".."u8))
                {
                    if (names.Count == maxNames)
                    {
                        return null;
                    }

                    names.Add(name.ToArray());
                }

                offset += recordLength;
            }
        }
    }

    /// <summary>The raw bytes of a symlink's target.</summary>
    internal static byte[] ReadLinkAt(int dirfd, byte[] name, Func<string> describe)
    {
        var buffer = new byte[4096];
        while (true)
        {
            var length = ReadLinkAtNative(dirfd, name, buffer, buffer.Length);
            if (length < 0)
            {
                throw Failure("reading symbolic link", describe());
            }

            if (length < buffer.Length)
            {
                return buffer.AsSpan(0, (int)length).ToArray();
            }

            buffer = new byte[buffer.Length * 2];
        }
    }

    /// <summary>Creates a directory; fails if anything already has that name.</summary>
    internal static void MakeDirectoryAt(int dirfd, byte[] name, Func<string> describe)
    {
        if (MkdirAtNative(dirfd, name, Convert.ToUInt32("777", 8)) != 0)
        {
            throw Failure("creating directory", describe());
        }
    }

    /// <summary>Creates a symlink holding exactly <paramref name="target"/>; fails if anything already has that name.</summary>
    internal static void MakeSymlinkAt(ReadOnlySpan<byte> target, int dirfd, byte[] name, Func<string> describe)
    {
        if (SymlinkAtNative(CString(target), dirfd, name) != 0)
        {
            throw Failure("creating symlink", describe());
        }
    }

    /// <summary>
    /// Creates a new regular file for writing: O_CREAT|O_EXCL|O_NOFOLLOW, so it fails on anything already there,
    /// including a symlink (dangling or not), and never writes through one.
    /// </summary>
    internal static int CreateFileAt(int dirfd, byte[] name, Func<string> describe, int mode = 0x1B6 /* 0666 */)
    {
        const int OWrOnly = 1, OCreat = 0x40, OExcl = 0x80;
        while (true)
        {
            var fd = OpenAtModeNative(dirfd, name, OWrOnly | OCreat | OExcl | OpenFlags.NoFollow | OCloExec, (uint)mode);
            if (fd >= 0)
            {
                return fd;
            }

            if (Marshal.GetLastPInvokeError() != EIntr)
            {
                throw Failure("creating file", describe());
            }
        }
    }

    /// <summary>Writes all of <paramref name="data"/>.</summary>
    internal static void WriteAll(int fd, ReadOnlySpan<byte> data, Func<string> describe)
    {
        while (!data.IsEmpty)
        {
            var written = WriteNative(fd, data, data.Length);
            if (written < 0)
            {
                if (Marshal.GetLastPInvokeError() == EIntr)
                {
                    continue;
                }

                throw Failure("writing file", describe());
            }

            data = data[(int)written..];
        }
    }

    /// <summary>
    /// Copies <paramref name="count"/> bytes of <paramref name="inFd"/> from <paramref name="offset"/> to
    /// <paramref name="outFd"/> inside the kernel. Returns the bytes copied (fewer at end of file), or -1 when the
    /// output does not support it (EINVAL, ENOSYS: a terminal, say), in which case nothing was copied.
    /// </summary>
    internal static long SendFile(int outFd, int inFd, long offset, long count, Func<string> describe)
    {
        const int EInval = 22, ENoSys = 38;
        var copied = 0L;
        while (copied < count)
        {
            var position = offset + copied;
            var sent = SendFileNative(outFd, inFd, ref position, (nint)Math.Min(count - copied, 1L << 30));
            if (sent > 0)
            {
                copied += sent;
                continue;
            }

            if (sent == 0)
            {
                break;
            }

            var errno = Marshal.GetLastPInvokeError();
            if (errno == EIntr)
            {
                continue;
            }

            if (copied == 0 && errno is EInval or ENoSys)
            {
                return -1;
            }

            throw Failure("copying file", describe());
        }

        return copied;
    }

    // struct timespec[2] (atime, mtime) as four longs: atime left alone (UTIME_OMIT), mtime set.
    private static long[] Times(long mtime) => [0, (1L << 30) - 2, mtime, 0];

    /// <summary>Sets an open file's or directory's modification time (leaving the access time).</summary>
    internal static void SetModificationTime(int fd, long mtime, Func<string> describe)
    {
        if (FutimensNative(fd, Times(mtime)) != 0)
        {
            throw Failure("setting the time of", describe());
        }
    }

    /// <summary>Sets an object's own modification time (a symlink's, not its target's), leaving the access time.</summary>
    internal static void SetModificationTimeNoFollow(int dirfd, byte[] name, long mtime, Func<string> describe)
    {
        if (UtimensatNative(dirfd, name, Times(mtime), AtSymlinkNoFollow) != 0)
        {
            throw Failure("setting the time of", describe());
        }
    }

    /// <summary>Sets an open file's or directory's permission bits.</summary>
    internal static void SetMode(int fd, int mode, Func<string> describe)
    {
        if (FchmodNative(fd, (uint)mode) != 0)
        {
            throw Failure("changing the permissions of", describe());
        }
    }

    /// <summary>Adds the execute bits for user, group and others, as Nix's restorePath does.</summary>
    internal static void MakeExecutable(int fd, Func<string> describe)
    {
        const int AtEmptyPath = 0x1000;
        if (StatxNative(fd, [0], AtEmptyPath, StatxMode, out var buffer) != 0 ||
            FchmodNative(fd, (uint)(buffer.Mode & Convert.ToInt32("7777", 8)) | Convert.ToUInt32("111", 8)) != 0)
        {
            throw Failure("making executable", describe());
        }
    }

    /// <summary>Sets the permission bits of a file or directory by name (never called on a symlink).</summary>
    internal static void SetModeAt(int dirfd, byte[] name, int mode, Func<string> describe)
    {
        if (FchmodatNative(dirfd, name, (uint)mode, 0) != 0)
        {
            throw Failure("changing the permissions of", describe());
        }
    }

    /// <summary>Sets the owner of an object by name, not following a symlink.</summary>
    internal static void SetOwnerAt(int dirfd, byte[] name, uint owner, uint group, Func<string> describe)
    {
        if (FchownatNative(dirfd, name, owner, group, AtSymlinkNoFollow) != 0)
        {
            throw Failure("changing the owner of", describe());
        }
    }

    /// <summary>lstat with the owner: mode, uid, gid, and the device and inode the object is.</summary>
    internal static (int Mode, uint Uid, uint Gid, (uint Major, uint Minor, ulong Inode) Identity) LStatOwnerAt(int dirfd, byte[] name, Func<string> describe)
    {
        const uint StatxUid = 0x8, StatxGid = 0x10, StatxIno = 0x100;
        if (StatxNative(dirfd, name, AtSymlinkNoFollow, StatxType | StatxMode | StatxUid | StatxGid | StatxIno, out var buffer) != 0)
        {
            throw Failure("getting status of", describe());
        }

        return (buffer.Mode, buffer.Uid, buffer.Gid, (buffer.DeviceMajor, buffer.DeviceMinor, buffer.Inode));
    }

    private static IOException Failure(string action, string path)
    {
        var errno = Marshal.GetLastPInvokeError();
        return new IOException($"{action} '{path}': {Marshal.GetPInvokeErrorMessage(errno)}", errno);
    }
}
