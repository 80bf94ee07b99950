using System.Collections.Concurrent;
using System.IO.Enumeration;

namespace Kiln.Agent;

/// <summary>
/// Keeps builds from filling the disk Kiln's store is on. Outputs are written to that disk (a build's store directory
/// cannot be in memory: outputs may rightly be many gigabytes), so no mount size bounds them. Instead each running
/// build's usage is measured while it runs: a build over its own limit is stopped, and when the disk's free space falls
/// under the reserve, the build using the most is stopped, so uploads, metadata and the other builds keep working.
/// </summary>
public sealed class DiskGuard(string directory, long reserveBytes)
{
    private readonly ConcurrentDictionary<Watch, byte> _running = new();

    /// <summary>The free space, on <see cref="Directory"/>'s file system, under which the largest build is stopped.</summary>
    public long ReserveBytes { get; } = reserveBytes;

    /// <summary>A directory on the disk being guarded.</summary>
    public string Directory { get; } = directory;

    /// <summary>Space free for Kiln (not root's reserve) on the guarded file system.</summary>
    public long FreeBytes() => new DriveInfo(Directory).AvailableFreeSpace;

    /// <summary>
    /// The size of the file system a directory is (or will be made) on, from which shares (<c>50%</c>) of it are
    /// reckoned: the nearest directory above it that exists tells.
    /// </summary>
    public static long FileSystemBytes(string directory)
    {
        var existing = Path.GetFullPath(directory);
        while (!System.IO.Directory.Exists(existing) && Path.GetDirectoryName(existing) is { } parent)
        {
            existing = parent;
        }

        return new DriveInfo(existing).TotalSize;
    }

    /// <summary>Starts watching one build's usage; dispose when the build is over.</summary>
    public Watch Start()
    {
        var watch = new Watch(this);
        _running[watch] = 0;
        return watch;
    }

    // The build to stop when space is short: the largest writer (one only: stopping it may be enough).
    private bool IsLargest(Watch watch) => _running.Keys.All(other => other == watch || other.UsedBytes <= watch.UsedBytes);

    /// <summary>One build's measured usage.</summary>
    public sealed class Watch : IDisposable
    {
        private readonly DiskGuard _guard;

        internal Watch(DiskGuard guard) => _guard = guard;

        /// <summary>Bytes the build had written when last measured.</summary>
        public long UsedBytes { get; private set; }

        /// <summary>Records a measurement; true if the disk is short of its reserve and this build is the one to stop.</summary>
        public bool Update(long usedBytes)
        {
            UsedBytes = usedBytes;
            return usedBytes > 0 && _guard.ReserveBytes > 0 && _guard.FreeBytes() < _guard.ReserveBytes && _guard.IsLargest(this);
        }

        public void Dispose() => _guard._running.TryRemove(this, out _);
    }
}

/// <summary>What a build has written under its directories, as the NARs of its outputs will hold it.</summary>
public static class DiskUsage
{
    /// <summary>
    /// The apparent size of the regular files under <paramref name="root"/> (what a NAR of them takes: a sparse file or
    /// a hard link counts in full), not following symbolic links, skipping top-level entries named in
    /// <paramref name="skip"/> (the inputs linked there). Stops counting after <paramref name="maxEntries"/> entries.
    /// </summary>
    public static long Measure(string root, IReadOnlySet<string> skip, int maxEntries = 1_000_000)
    {
        ArgumentNullException.ThrowIfNull(skip);
        var top = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root)).Length;
        var options = new EnumerationOptions { RecurseSubdirectories = true, IgnoreInaccessible = true, AttributesToSkip = 0, ReturnSpecialDirectories = false };
        var files = new FileSystemEnumerable<long>(root, (ref FileSystemEntry entry) =>
            entry.IsDirectory || (entry.Attributes & FileAttributes.ReparsePoint) != 0 ? 0 : entry.Length, options)
        {
            // A symbolic link is never followed (it may name any directory of the host), nor an input's tree.
            ShouldRecursePredicate = (ref FileSystemEntry entry) =>
                (entry.Attributes & FileAttributes.ReparsePoint) == 0 && !(entry.Directory.Length == top && skip.Contains(entry.FileName.ToString())),
            ShouldIncludePredicate = (ref FileSystemEntry entry) => !(entry.Directory.Length == top && skip.Contains(entry.FileName.ToString())),
        };
        long total = 0;
        try
        {
            var entries = 0;
            foreach (var length in files)
            {
                total += length;
                if (++entries >= maxEntries)
                {
                    break;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The build removed or replaced a directory while it was read: what was counted stands until next time.
        }

        return total;
    }
}
