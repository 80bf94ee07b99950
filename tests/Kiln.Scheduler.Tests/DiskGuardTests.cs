using Kiln.Agent;
using Kiln.Nix.Tests.Support;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// 20.1, disk: a build's usage is what its outputs' NARs will hold (sparse files and hard links in full), never what a
/// symbolic link points at, and nothing hides from it (names that are not UTF-8, paths past PATH_MAX); when the disk
/// is short, only the largest writer is the one to stop.
/// </summary>
public class DiskGuardTests
{
    private static readonly TimeSpan Minute = TimeSpan.FromMinutes(1);

    private static async Task<long> CountAsync(params string[] roots) =>
        (await DiskUsage.MeasureAsync(roots, Minute, CancellationToken.None)).Bytes ?? throw new InvalidOperationException("du gave no figure");

    [Fact]
    public async Task Usage_counts_what_the_nars_will_hold_and_nothing_the_build_only_points_at()
    {
        using var temp = new TempDir();
        var store = temp["store"];
        var outside = temp["outside"];
        Directory.CreateDirectory(Path.Combine(store, "out", "sub"));
        Directory.CreateDirectory(outside);
        File.WriteAllBytes(Path.Combine(store, "out", "sub", "a"), new byte[1000]);
        File.WriteAllBytes(Path.Combine(store, "stray"), new byte[300]);
        using (var sparse = File.Create(Path.Combine(store, "out", "sparse")))
        {
            sparse.SetLength(1L << 30); // a 1 GiB hole: its NAR holds a gigabyte
        }

        Assert.Equal(0, Processes.Run("ln", [Path.Combine(store, "out", "sub", "a"), Path.Combine(store, "out", "link-to-a")]).ExitCode);
        using (var big = File.Create(Path.Combine(outside, "host-file")))
        {
            big.SetLength(100L << 30);
        }

        File.CreateSymbolicLink(Path.Combine(store, "out", "to-outside"), outside);
        File.CreateSymbolicLink(Path.Combine(store, "out", "to-host-file"), Path.Combine(outside, "host-file"));

        // Files, plus directories and links at their own (small) sizes.
        var used = await CountAsync(store);
        Assert.InRange(used, (1L << 30) + 1000 + 1000 + 300, (1L << 30) + (1 << 20));

        // Counted in kiln serve (a settled tree), the figure is du's to the byte; so is a root that is a symlink.
        Assert.Equal(used, DiskUsage.CountSettled([store, temp["missing"]], 100));
        Assert.Equal(await CountAsync(Path.Combine(store, "out", "to-outside")), DiskUsage.CountSettled([Path.Combine(store, "out", "to-outside")], 100));
    }

    [Fact]
    public async Task A_sparse_file_as_large_as_a_file_can_be_counts_as_all_there_is()
    {
        // tmpfs (and XFS, btrfs) take a file of 2^63 - 1 bytes: with the directory around it the total passes what a
        // long holds, and a count that wrapped (or gave no figure) would pass any limit.
        Assert.SkipUnless(Directory.Exists("/dev/shm"), "no tmpfs at /dev/shm");
        var directory = Path.Combine("/dev/shm", $"kiln-test-{Guid.NewGuid():N}");
        Directory.CreateDirectory(directory);
        try
        {
            using (var sparse = File.Create(Path.Combine(directory, "huge")))
            {
                sparse.SetLength(long.MaxValue);
            }

            Assert.Equal(long.MaxValue, DiskUsage.CountSettled([directory], 100));
            Assert.Equal(long.MaxValue, await CountAsync(directory));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public async Task A_settled_count_leaves_out_the_linked_inputs_it_is_told_of_and_nothing_else()
    {
        using var temp = new TempDir();
        var store = temp["store"];
        var build = temp["build"];
        foreach (var directory in new[] { Path.Combine(store, "aaaa-input", "bin"), Path.Combine(store, "bbbb-output"), Path.Combine(build, "aaaa-input") })
        {
            Directory.CreateDirectory(directory);
        }

        File.WriteAllBytes(Path.Combine(store, "aaaa-input", "bin", "tool"), new byte[5000]);
        File.WriteAllBytes(Path.Combine(store, "bbbb-output", "file"), new byte[700]);
        // The same name elsewhere (in another root, or deeper down) is the build's own and counts.
        File.WriteAllBytes(Path.Combine(build, "aaaa-input", "scratch"), new byte[900]);
        Directory.CreateDirectory(Path.Combine(store, "bbbb-output", "aaaa-input"));

        var all = await CountAsync(store, build);
        var input = await CountAsync(Path.Combine(store, "aaaa-input"));
        Assert.Equal(all, DiskUsage.CountSettled([store, build], 100));
        Assert.Equal(all - input, DiskUsage.CountSettled([store, build], 100, new HashSet<string>(StringComparer.Ordinal) { "aaaa-input" }));
        // Left out, its entries do not count against the budget either.
        Assert.Null(DiskUsage.CountSettled([store, build], 9));
        Assert.Equal(all - input, DiskUsage.CountSettled([store, build], 9, new HashSet<string>(StringComparer.Ordinal) { "aaaa-input" }));
    }

    [Fact]
    public void A_settled_count_leaves_large_and_deep_trees_to_du()
    {
        using var temp = new TempDir();
        Assert.Equal(0, Processes.Run("sh", ["-c", "cd \"$1\" && mkdir wide && cd wide && seq 1 50 | xargs touch", "sh", temp.Path]).ExitCode);
        Assert.NotNull(DiskUsage.CountSettled([temp.Path], 52));
        Assert.Null(DiskUsage.CountSettled([temp.Path], 51)); // one name too many
        Assert.Null(DiskUsage.CountSettled([temp.Path], 10)); // never reads past its budget

        var deep = temp["deep"];
        Directory.CreateDirectory(Path.Combine([deep, .. Enumerable.Repeat("d", 70)]));
        Assert.Null(DiskUsage.CountSettled([deep], 1000));
    }

    [Fact]
    public async Task Names_a_program_cannot_print_and_paths_past_PATH_MAX_hide_nothing()
    {
        using var temp = new TempDir();
        // A 1 GiB file behind a name that is not UTF-8, another in a directory so named, and a third at the end of a
        // chain of directories 5,000 characters deep.
        const string Script = """
            set -e
            cd "$1"
            truncate -s 1G "$(printf 'x\377')"
            mkdir "$(printf '\377\376')"
            truncate -s 1G "$(printf '\377\376')/inside"
            long=$(printf 'd%.0s' $(seq 1 250))
            for i in $(seq 1 20); do mkdir "$long"; cd "$long"; done
            truncate -s 1G deep
            """;
        var made = Processes.Run("bash", ["-c", Script, "bash", temp.Path]);
        Assert.True(made.ExitCode == 0, made.Stderr);

        var used = await CountAsync(temp.Path);
        Assert.InRange(used, 3L << 30, (3L << 30) + (1 << 20));
        Assert.Equal(used, DiskUsage.CountSettled([temp.Path], 100));
    }

    [Fact]
    public async Task A_count_that_does_not_finish_in_time_says_so()
    {
        using var temp = new TempDir();
        // 20,000 files take du far longer than a millisecond (its own start does).
        Assert.Equal(0, Processes.Run("sh", ["-c", "cd \"$1\" && seq 1 20000 | xargs touch", "sh", temp.Path]).ExitCode);
        var count = await DiskUsage.MeasureAsync([temp.Path], TimeSpan.FromMilliseconds(1), CancellationToken.None);
        Assert.True(count.TimedOut);
        Assert.Null(count.Bytes);
    }

    [Fact]
    public void When_the_disk_is_short_only_the_largest_writer_is_stopped()
    {
        using var temp = new TempDir();
        // A reserve no disk has: the disk is always short.
        var short_ = new DiskGuard(temp.Path, long.MaxValue);
        using var small = short_.Start();
        using var large = short_.Start();
        Assert.True(large.Update(1000));
        Assert.False(small.Update(10));
        Assert.True(large.Update(1001));
        large.Dispose(); // the largest stopped and gone: the next one is next
        Assert.True(small.Update(20));
        Assert.False(small.Update(0)); // nothing written, nothing to stop

        var roomy = new DiskGuard(temp.Path, 1);
        using var alone = roomy.Start();
        Assert.False(alone.Update(1L << 40));
        Assert.True(roomy.FreeBytes() > 0);
        Assert.True(DiskGuard.FileSystemBytes(temp["not/made/yet"]) >= roomy.FreeBytes());
    }
}
