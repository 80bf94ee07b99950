using Kiln.Agent;
using Kiln.Nix.Tests.Support;

namespace Kiln.Scheduler.Tests;

/// <summary>The agent's unpacked inputs stay under their size bound, least recently used first, never one a build uses.</summary>
public sealed class InputCacheTests : IDisposable
{
    private readonly TempDir _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public async Task The_least_recently_used_entries_no_build_holds_go_when_the_cache_is_over_its_bound()
    {
        var store = new MemoryAgentStore();
        var cache = new InputCache(_temp["unpacked"], store);
        var nars = Enumerable.Range(0, 4).Select(i => store.Add(new string((char)('a' + i), 1000))).ToList();
        var size = nars[0].Size;

        // a, b, c used in turn; a is used again (so b is now the oldest); d is held by a running build.
        foreach (var i in new[] { 0, 1, 2, 0 })
        {
            using var use = cache.Use([nars[i]]);
            await cache.EnsureAsync(nars[i].Hash);
        }

        using (cache.Use([nars[3]]))
        {
            await cache.EnsureAsync(nars[3].Hash);
            Assert.Equal(4 * size, cache.Bytes);

            // Room for two: b then c go; d stays (in use) although the bound is passed without it.
            Assert.Equal(2, cache.Trim(2 * size));
            Assert.False(Directory.Exists(cache.TreeOf(nars[1].Hash)) || File.Exists(cache.TreeOf(nars[1].Hash)));
            Assert.False(File.Exists(cache.TreeOf(nars[2].Hash)));
            Assert.True(File.Exists(cache.TreeOf(nars[0].Hash)));
            Assert.True(File.Exists(cache.TreeOf(nars[3].Hash)));
            Assert.Equal(2 * size, cache.Bytes);

            Assert.Equal(1, cache.Trim(size));
            Assert.True(File.Exists(cache.TreeOf(nars[3].Hash)));
        }

        // A new process finds what is left and counts it; unbounded never trims.
        var again = new InputCache(_temp["unpacked"], store);
        again.Index();
        Assert.Equal(1000, again.Bytes); // the file's bytes (a NAR it finds is counted by its contents)
        Assert.Equal(0, again.Trim(0));
        Assert.Equal(1, again.Trim(1));
        Assert.Equal(0, again.Bytes);
    }

    [Fact]
    public async Task An_entry_that_cannot_be_deleted_leaves_the_cache_and_the_trim_goes_on()
    {
        Assert.SkipUnless(CanMarkImmutable(), "no chattr +i here (not root, no CAP_LINUX_IMMUTABLE, or a file system without attributes)");
        var store = new MemoryAgentStore();
        var cache = new InputCache(_temp["unpacked"], store);
        var (stuck, other) = (store.AddTree("stuck"), store.AddTree("other"));
        foreach (var nar in new[] { stuck, other })
        {
            using var use = cache.Use([nar]);
            await cache.EnsureAsync(nar.Hash);
        }

        // A file even root cannot remove (as a file the kernel will not let go of would be).
        var immutable = Path.Combine(cache.TreeOf(stuck.Hash), "id");
        Chattr("+i", immutable);
        try
        {
            Assert.Equal(2, cache.Trim(1)); // no exception: it runs after every build
            Assert.Equal(0, cache.Bytes);
            Assert.False(Directory.Exists(cache.TreeOf(other.Hash)));
            Assert.False(Directory.Exists(cache.TreeOf(stuck.Hash)));
            var leftover = Assert.Single(Directory.EnumerateDirectories(_temp["unpacked"], ".gone-*", SearchOption.AllDirectories));
            Chattr("-i", Path.Combine(leftover, "id"));

            // The next start deletes the leftover.
            var again = new InputCache(_temp["unpacked"], store);
            again.DeleteLeftovers();
            Assert.False(Directory.Exists(leftover));
        }
        finally
        {
            // (The temporary directory must go whatever happened above.)
            foreach (var file in Directory.EnumerateFiles(_temp["unpacked"], "id", SearchOption.AllDirectories))
            {
                Chattr("-i", file);
            }
        }
    }

    private bool CanMarkImmutable()
    {
        var probe = _temp["probe"];
        File.WriteAllText(probe, "");
        try
        {
            if (!TryChattr("+i", probe))
            {
                return false;
            }

            Chattr("-i", probe);
            return true;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false; // no chattr
        }
    }

    private static void Chattr(string flag, string path) => Assert.True(TryChattr(flag, path), $"chattr {flag} {path} failed");

    private static bool TryChattr(string flag, string path)
    {
        using var chattr = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("chattr", [flag, path]) { RedirectStandardError = true });
        chattr!.StandardError.ReadToEnd();
        chattr.WaitForExit();
        return chattr.ExitCode == 0;
    }
}
