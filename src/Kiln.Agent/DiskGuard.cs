using System.Collections.Concurrent;
using System.Text;
using Kiln.Nix.Nar;

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

    private bool IsShort()
    {
        try
        {
            return FreeBytes() < ReserveBytes;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false; // cannot tell: no build is stopped for it
        }
    }

    /// <summary>Starts watching one build's usage; dispose when the build is over.</summary>
    public Watch Start()
    {
        var watch = new Watch(this, Interlocked.Increment(ref _started));
        _running[watch] = 0;
        return watch;
    }

    private long _started;

    // The build to stop when space is short: the largest writer, one only (stopping it may be enough); of two
    // writers as large, the later.
    private bool IsLargest(Watch watch) => _running.Keys.All(other => other == watch || other.UsedBytes < watch.UsedBytes ||
        (other.UsedBytes == watch.UsedBytes && other.Sequence < watch.Sequence));

    /// <summary>One build's measured usage.</summary>
    public sealed class Watch : IDisposable
    {
        private readonly DiskGuard _guard;

        internal Watch(DiskGuard guard, long sequence)
        {
            _guard = guard;
            Sequence = sequence;
        }

        internal long Sequence { get; }

        /// <summary>Bytes the build had written when last measured.</summary>
        public long UsedBytes { get; private set; }

        /// <summary>Records a measurement; true if the disk is short of its reserve and this build is the one to stop.</summary>
        public bool Update(long usedBytes)
        {
            UsedBytes = usedBytes;
            return usedBytes > 0 && _guard.ReserveBytes > 0 && _guard.IsShort() && _guard.IsLargest(this);
        }

        public void Dispose() => _guard._running.TryRemove(this, out _);
    }
}

/// <summary>
/// What a build has written, counted by GNU du in a process of its own: by apparent size (what the outputs' NARs will
/// hold: a sparse file, each hard link and each directory in full), symbolic links never followed, one file system,
/// whatever the names' bytes. du walks with file descriptors (fts), so a directory swapped for a link while it walks
/// does not lead it out, and its memory is not kiln serve's.
/// </summary>
public static class DiskUsage
{
    // One total of all roots; hard links counted each time; one file system; bytes; apparent sizes.
    private static readonly string[] Options = ["-s", "-c", "-l", "-x", "-B1", "--apparent-size", "--"];

    /// <summary>
    /// The same total as du gives, counted in this process, for small trees (a build's directories, while it runs and
    /// once its processes are gone, an unpacked input): a du process costs a few milliseconds, which is most of what
    /// counting a trivial build's writes costs. Walks with descriptors and raw names (names that are not UTF-8 count as
    /// any other, a symlink is never followed, a directory swapped for a link is not entered); null — count with du
    /// instead — past <paramref name="maxEntries"/> entries, 64 levels, or on anything it cannot read (an entry
    /// removed under the walk). Entries of the first root
    /// named in <paramref name="skipInFirstRoot"/> are left out with all they hold (a build's linked inputs, whose
    /// size the caller knows).
    /// </summary>
    public static long? CountSettled(IReadOnlyList<string> roots, int maxEntries, IReadOnlySet<string>? skipInFirstRoot = null)
    {
        ArgumentNullException.ThrowIfNull(roots);
        var budget = maxEntries;
        long total = 0;
        var scratch = new byte[16 * 1024];
        try
        {
            for (var i = 0; i < roots.Count; i++)
            {
                if (--budget < 0)
                {
                    return null;
                }

                if (StorePathGraph.ExistsNoFollow(roots[i]) && !Add(Posix.AtFdCwd, Posix.CString(roots[i]), 0, i == 0 ? skipInFirstRoot : null))
                {
                    return null;
                }
            }

            return total;
        }
        catch (IOException)
        {
            return null;
        }

        bool Add(int directory, byte[] name, int depth, IReadOnlySet<string>? skip = null)
        {
            if (depth > 64)
            {
                return false;
            }

            // (Saturating: a sparse file may claim up to 2^63 bytes, and a sum that wrapped would pass any limit.)
            var (mode, size) = Posix.LStatAt(directory, name, () => "an entry");
            total = size > long.MaxValue - total ? long.MaxValue : total + size;
            if ((mode & Posix.FileTypeMask) != Posix.Directory)
            {
                return true;
            }

            var fd = Posix.OpenDirectoryAt(directory, name, () => "a directory");
            try
            {
                // Every name read counts against the budget as it is read (the names of each directory on the way
                // down are held while its entries are walked): a directory of millions is du's to count.
                if (Posix.ReadDirectoryUpTo(fd, scratch, budget, () => "a directory") is not { } entries)
                {
                    return false;
                }

                budget -= entries.Count;
                foreach (var entry in entries)
                {
                    if (skip is not null && skip.Contains(Encoding.UTF8.GetString(entry)))
                    {
                        continue;
                    }

                    if (!Add(fd, Posix.CString(entry), depth + 1))
                    {
                        return false;
                    }
                }

                return true;
            }
            finally
            {
                Posix.Close(fd);
            }
        }
    }

    /// <summary>A count: the bytes (null if du did not finish or could not say) and how long it took.</summary>
    public readonly record struct Count(long? Bytes, TimeSpan Took, bool TimedOut);

    /// <summary>The total under <paramref name="roots"/> (existing ones), or no figure after <paramref name="deadline"/>.</summary>
    public static async Task<Count> MeasureAsync(IReadOnlyList<string> roots, TimeSpan deadline, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(roots);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var start = new System.Diagnostics.ProcessStartInfo("du") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in Options.Concat(roots))
        {
            start.ArgumentList.Add(argument);
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(deadline);
        System.Diagnostics.Process? process = null;
        try
        {
            process = System.Diagnostics.Process.Start(start);
            if (process is null)
            {
                return new Count(null, watch.Elapsed, false);
            }

            var errors = process.StandardError.ReadToEndAsync(timeout.Token);
            var output = await process.StandardOutput.ReadToEndAsync(timeout.Token).ConfigureAwait(false);
            await process.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
            await errors.ConfigureAwait(false);
            // The last line is "<bytes>\ttotal"; du goes on past what it cannot read (and then exits 1).
            var last = output.TrimEnd('\n').Split('\n')[^1];
            var tab = last.IndexOf('\t', StringComparison.Ordinal);
            if (tab <= 0)
            {
                return new Count(null, watch.Elapsed, false);
            }

            // A total past what a long holds (sparse files claiming 2^63 bytes each; du may then print "Infinity") is
            // as much as there can be, never no figure: no figure leaves the last one standing.
            var figure = last.AsSpan(0, tab);
            return long.TryParse(figure, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var bytes)
                ? new Count(bytes, watch.Elapsed, false)
                : new Count(figure.Length > 0 && (figure.SequenceEqual("Infinity") || !figure.ContainsAnyExceptInRange('0', '9')) ? long.MaxValue : null, watch.Elapsed, false);
        }
        catch (OperationCanceledException)
        {
            return new Count(null, watch.Elapsed, !cancellationToken.IsCancellationRequested);
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return new Count(null, watch.Elapsed, false); // no du on this host
        }
        finally
        {
            if (process is not null)
            {
                try
                {
                    process.Kill();
                }
                catch (InvalidOperationException)
                {
                    // it ended
                }

                process.Dispose();
            }
        }
    }
}
