using System.Text;

namespace Kiln.Nix.Nar;

/// <summary>
/// Gives a build output the metadata every store path has (Nix's <c>canonicalisePathMetaData</c>): modification time
/// 1, permissions 0444 or 0555 (only the owner-execute bit decides; setuid, setgid and sticky bits go), directories
/// 0555 as current Nix makes them, and the calling process as owner. Only regular files, directories and symlinks
/// may appear. The tree is walked relative to directory descriptors and never through a symlink; it must not change
/// while this runs (the build's processes are gone).
/// </summary>
public static class Canonicaliser
{
    private const int ReadOnlyMode = 0x124; // 0444
    private const int ExecutableMode = 0x16D; // 0555
    private const int GroupOrWorldWritable = 0x12; // S_IWGRP | S_IWOTH

    /// <summary>
    /// Whether the top of an output is writable by group or others, which Nix treats as a sign of tampering
    /// ("suspicious ownership or permission"), or, when builds run as a user of their own, not owned by that user.
    /// Symlinks have no permissions of their own.
    /// </summary>
    public static bool IsSuspicious(string path, uint? builderUid = null)
    {
        var name = Posix.CString(path);
        var (mode, uid, _, _) = Posix.LStatOwnerAt(Posix.AtFdCwd, name, () => path);
        return ((mode & Posix.FileTypeMask) != Posix.Symlink && (mode & GroupOrWorldWritable) != 0) || (builderUid is { } builder && uid != builder);
    }

    /// <summary>Canonicalises the tree at <paramref name="path"/> in place.</summary>
    /// <exception cref="IOException">An object of another type (FIFO, socket, device) is in the tree.</exception>
    public static void Canonicalise(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        // The directory-reading buffer is the shared pool's: every build's outputs are canonicalised, and a fresh
        // 64 KiB array each time was garbage the size of the rest of the build's allocations.
        var directoryBuffer = System.Buffers.ArrayPool<byte>.Shared.Rent(64 * 1024);
        try
        {
            new Walker(Posix.GetEffectiveUserId(), Posix.GetEffectiveGroupId(), directoryBuffer)
                .Visit(Posix.AtFdCwd, Posix.CString(path), () => path, depth: 0);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(directoryBuffer);
        }
    }

    private sealed class Walker(uint uid, uint gid, byte[] directoryBuffer)
    {

        public void Visit(int directory, byte[] name, Func<string> describe, int depth)
        {
            if (depth >= NarLimits.Default.MaxDepth)
            {
                throw new IOException($"path '{describe()}' exceeds maximum NAR directory depth of {NarLimits.Default.MaxDepth}");
            }

            var (mode, owner, group, _) = Posix.LStatOwnerAt(directory, name, describe);
            var type = mode & Posix.FileTypeMask;
            if (type is not (Posix.Regular or Posix.Directory or Posix.Symlink))
            {
                throw new IOException($"file '{describe()}' has an unsupported type");
            }

            if (type != Posix.Symlink)
            {
                var permissions = mode & 0xFFF;
                var wanted = type == Posix.Directory || (permissions & Posix.OwnerExecute) != 0 ? ExecutableMode : ReadOnlyMode;
                if (permissions != wanted)
                {
                    // A directory gets r-x before its entries are visited, so it can always be read.
                    Posix.SetModeAt(directory, name, wanted, describe);
                }
            }

            if (owner != uid || group != gid)
            {
                Posix.SetOwnerAt(directory, name, uid, gid, describe);
            }

            if (type == Posix.Directory)
            {
                var fd = Posix.OpenDirectoryAt(directory, name, describe);
                try
                {
                    foreach (var entry in Posix.ReadDirectory(fd, directoryBuffer, describe))
                    {
                        Visit(fd, Posix.CString(entry), () => $"{describe()}/{Encoding.UTF8.GetString(entry)}", depth + 1);
                    }

                    // Last, because changing the entries changed the directory's own times.
                    Posix.SetModificationTime(fd, NarExtractor.StoreModificationTime, describe);
                }
                finally
                {
                    Posix.Close(fd);
                }
            }
            else
            {
                Posix.SetModificationTimeNoFollow(directory, name, NarExtractor.StoreModificationTime, describe);
            }
        }
    }
}
