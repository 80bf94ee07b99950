using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;

namespace Kiln.Agent;

/// <summary>
/// Linked copies of small inputs (<see cref="InputLinks"/>) kept between builds. A build's input closure is most of
/// what a trivial build costs Kiln: a copy of every small input's directories with its files linked in, made before
/// the build and removed after it — tens of directories and links per build, proportional to the whole closure, and on
/// ext4 every new directory searches the inode tables (without a journal, past every inode freed in the last minutes,
/// which a busy build host has many of). Instead, a copy is moved into the build's store when the build starts and
/// moved back out when it is over: two renames, whatever the input holds.
/// <para>
/// A copy is Kiln's: its directories are root's and read-only (0555), its files the input cache's read-only inodes, in
/// a store directory whose sticky bit keeps the build user from renaming or removing root's entries — so a build can
/// change it no more than a read-only mount, and one copy serves the next build of any account with the same content
/// (copies are kept by NAR hash, as the input cache is). A copy comes back only as the same read-only directory of
/// root's it left as; anything else stays in the build directory and goes with it. Copies live under the builds
/// directory, which every start clears, and go when the input cache drops their entry (<see cref="Detach"/>), so no
/// copy keeps a removed entry's files on disk.
/// </para>
/// </summary>
internal sealed class LinkedInputPool(string root, int maxCopies = LinkedInputPool.DefaultMaxCopies)
{
    /// <summary>At most this many copies are kept (a copy costs its directories' inodes, not its files' bytes).</summary>
    public const int DefaultMaxCopies = 4096;

    private const int ReadOnlyDirectory = 0x4000 | 0x16D; // S_IFDIR | 0555

    // Kept copies by NAR hash; guarded by itself.
    private readonly Dictionary<NixHash, Stack<string>> _kept = [];
    private int _count;
    private long _names;
    private bool _rootMade;

    /// <summary>How many copies are kept now.</summary>
    public int Count
    {
        get
        {
            lock (_kept)
            {
                return _count;
            }
        }
    }

    /// <summary>A copy placed in a build's store: which input, where, and the directory it is (device and inode).</summary>
    public sealed record Placed(NixHash NarHash, string Path, (uint Major, uint Minor, ulong Inode) Identity);

    /// <summary>
    /// Puts a linked copy of <paramref name="tree"/> (the input cache's entry for <paramref name="narHash"/>) at
    /// <paramref name="destination"/>: a kept one if there is one, else a new one. Null if the input is too large
    /// to link (mount it instead). The caller must hold the input cache's lease on the entry until it gives the copy
    /// back with <see cref="Return"/>.
    /// </summary>
    public Placed? TryPlace(NixHash narHash, string tree, string destination)
    {
        string? kept = null;
        lock (_kept)
        {
            if (_kept.TryGetValue(narHash, out var copies))
            {
                kept = copies.Pop();
                _count--;
                if (copies.Count == 0)
                {
                    _kept.Remove(narHash);
                }
            }
        }

        if (kept is not null)
        {
            // (Never over something of that name: rename(2) would replace an empty directory.)
            if (!StorePathGraph.ExistsNoFollow(destination) && Native.Rename(kept, destination))
            {
                return new Placed(narHash, destination, Identity(destination));
            }

            Delete(kept);
        }

        return InputLinks.TryLink(tree, destination) ? new Placed(narHash, destination, Identity(destination)) : null;
    }

    private static (uint, uint, ulong) Identity(string path) => Posix.LStatOwnerAt(Posix.AtFdCwd, Posix.CString(path), () => path).Identity;

    /// <summary>
    /// Takes back a placed copy once its build is over (its processes gone), if it is still the very read-only
    /// directory of root's that was put there and there is room; otherwise it stays where it is (and goes with the
    /// build directory).
    /// </summary>
    public void Return(Placed placed)
    {
        ArgumentNullException.ThrowIfNull(placed);
        int mode;
        uint owner;
        (uint, uint, ulong) identity;
        try
        {
            (mode, owner, _, identity) = Posix.LStatOwnerAt(Posix.AtFdCwd, Posix.CString(placed.Path), () => placed.Path);
        }
        catch (IOException)
        {
            return;
        }

        // A file or a symlink input is one link to make again; only directories are worth keeping.
        if (owner != 0 || (mode & 0xFFFF) != ReadOnlyDirectory || identity != placed.Identity)
        {
            return;
        }

        lock (_kept)
        {
            if (_count >= maxCopies)
            {
                return;
            }

            if (!_rootMade)
            {
                // Giving a copy back is tidying up after a build that is over: if there is no room for even the pool's
                // directory (the disk filled, perhaps by this very build), the copy goes with the build directory and
                // the build's own outcome stands.
                try
                {
                    Directory.CreateDirectory(root);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    return;
                }

                _rootMade = true;
            }

            var name = Path.Combine(root, (++_names).ToString(System.Globalization.CultureInfo.InvariantCulture));
            if (!Native.Rename(placed.Path, name))
            {
                return;
            }

            if (!_kept.TryGetValue(placed.NarHash, out var copies))
            {
                _kept[placed.NarHash] = copies = new Stack<string>();
            }

            copies.Push(name);
            _count++;
        }
    }

    /// <summary>
    /// Takes the kept copies of an input the cache is removing out of the pool (called under the cache's lock, while no
    /// build uses it, so none is placed meanwhile); delete them with <see cref="Delete(IEnumerable{string})"/> after.
    /// </summary>
    public IReadOnlyList<string> Detach(NixHash narHash)
    {
        lock (_kept)
        {
            if (!_kept.Remove(narHash, out var copies))
            {
                return [];
            }

            _count -= copies.Count;
            return [.. copies];
        }
    }

    /// <summary>Deletes detached copies.</summary>
    public static void Delete(IEnumerable<string> copies)
    {
        foreach (var copy in copies)
        {
            Delete(copy);
        }
    }

    private static void Delete(string copy) => SandboxExecutor.DeleteBuildDirectory(copy);
}
