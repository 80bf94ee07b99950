using Kiln.Nix.Nar;

namespace Kiln.Agent;

/// <summary>
/// Small inputs made visible in a build's store by hard links instead of mounts. bubblewrap re-reads the mount table
/// for every mount it makes, so a few hundred inputs cost it tens of milliseconds per build where Nix's own sandbox
/// pays almost nothing; a copy of a small input's directories with its files linked in costs a few system calls.
/// Only used when builds run as a user of their own (<see cref="BuildUsers"/>): the linked files and the directories
/// belong to Kiln, read-only and canonical (mode 0444/0555, mtime 1), so the build can neither change nor remove
/// them, exactly as with a read-only mount. Large inputs are still mounted.
/// </summary>
internal static class InputLinks
{
    /// <summary>Inputs with more entries than this are mounted.</summary>
    public const int MaxEntries = 64;

    /// <summary>Links <paramref name="tree"/> at <paramref name="destination"/> if it is small enough; false if it must be mounted.</summary>
    public static bool TryLink(string tree, string destination)
    {
        var budget = MaxEntries;
        if (!Small(new FileInfo(tree), ref budget))
        {
            return false;
        }

        Link(tree, destination);
        return true;
    }

    private static bool Small(FileSystemInfo entry, ref int budget)
    {
        if (--budget < 0)
        {
            return false;
        }

        if (entry.LinkTarget is not null || !Directory.Exists(entry.FullName))
        {
            return true; // a symlink or a file
        }

        foreach (var child in new DirectoryInfo(entry.FullName).EnumerateFileSystemInfos())
        {
            if (!Small(child, ref budget))
            {
                return false;
            }
        }

        return true;
    }

    private static void Link(string source, string destination)
    {
        var info = new FileInfo(source);
        if (info.LinkTarget is { } target)
        {
            File.CreateSymbolicLink(destination, target);
            SetCanonicalTime(destination);
        }
        else if (Directory.Exists(source))
        {
            // Never into something already there: a copy holds exactly its input.
            Posix.MakeDirectoryAt(Posix.AtFdCwd, Posix.CString(destination), () => destination);
            foreach (var child in Directory.EnumerateFileSystemEntries(source))
            {
                Link(child, Path.Combine(destination, Path.GetFileName(child)));
            }

            File.SetUnixFileMode(destination, (UnixFileMode)Convert.ToInt32("555", 8));
            SetCanonicalTime(destination);
        }
        else
        {
            Native.Link(source, destination);
        }
    }

    private static void SetCanonicalTime(string path) =>
        Posix.SetModificationTimeNoFollow(Posix.AtFdCwd, Posix.CString(path), NarExtractor.StoreModificationTime, () => path);
}
