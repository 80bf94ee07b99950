using Kiln.Agent;
using Kiln.Nix.Tests.Support;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// 20.1, disk: a build's usage is what its outputs' NARs will hold (sparse files and hard links in full), never what a
/// symbolic link points at nor the inputs linked into its store directory; when the disk is short, only the largest
/// writer is the one to stop.
/// </summary>
public class DiskGuardTests
{
    [Fact]
    public void Usage_counts_what_the_nars_will_hold_and_nothing_the_build_only_points_at()
    {
        using var temp = new TempDir();
        var store = temp["store"];
        var outside = temp["outside"];
        Directory.CreateDirectory(Path.Combine(store, "out", "sub"));
        Directory.CreateDirectory(Path.Combine(store, "input-linked"));
        Directory.CreateDirectory(outside);
        File.WriteAllBytes(Path.Combine(store, "out", "sub", "a"), new byte[1000]);
        File.WriteAllBytes(Path.Combine(store, "stray"), new byte[300]);
        using (var sparse = File.Create(Path.Combine(store, "out", "sparse")))
        {
            sparse.SetLength(1L << 30); // a 1 GiB hole: its NAR holds a gigabyte
        }

        Assert.Equal(0, Processes.Run("ln", [Path.Combine(store, "out", "sub", "a"), Path.Combine(store, "out", "link-to-a")]).ExitCode);
        File.WriteAllBytes(Path.Combine(store, "input-linked", "big"), new byte[5000]);
        File.WriteAllBytes(Path.Combine(outside, "host-file"), new byte[7000]);
        File.CreateSymbolicLink(Path.Combine(store, "out", "to-outside"), outside);
        File.CreateSymbolicLink(Path.Combine(store, "out", "to-host-file"), Path.Combine(outside, "host-file"));

        var used = DiskUsage.Measure(store, new HashSet<string> { "input-linked" });

        Assert.Equal((1L << 30) + 1000 + 1000 + 300, used);
        Assert.Equal(used + 5000, DiskUsage.Measure(store + "/", new HashSet<string>()));
    }

    [Fact]
    public void A_walk_stops_at_its_entry_budget()
    {
        using var temp = new TempDir();
        for (var i = 0; i < 50; i++)
        {
            File.WriteAllBytes(temp[$"f{i}"], new byte[10]);
        }

        Assert.Equal(500, DiskUsage.Measure(temp.Path, new HashSet<string>()));
        Assert.Equal(100, DiskUsage.Measure(temp.Path, new HashSet<string>(), maxEntries: 10));
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
