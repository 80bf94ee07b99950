using Kiln.Agent;
using Kiln.Nix.Tests.Support;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// Linked copies of small inputs go from build to build by rename, come back only as Kiln left them, are bounded, and
/// go with their input cache entry.
/// </summary>
public sealed class LinkedInputPoolTests : IDisposable
{
    private readonly TempDir _temp = new();

    public void Dispose() => _temp.Dispose();

    // Copies are Kiln's own only when Kiln is root (as it is when it links inputs at all).
    private static void RequireRoot() => Assert.SkipUnless(Environment.UserName == "root", "linked inputs are made only by a root Kiln");

    private (MemoryAgentStore Store, InputCache Cache, LinkedInputPool Pool) Make(int maxCopies = LinkedInputPool.DefaultMaxCopies)
    {
        var store = new MemoryAgentStore();
        var pool = new LinkedInputPool(_temp["builds/.linked"], maxCopies);
        return (store, new InputCache(_temp["unpacked"], store, pool), pool);
    }

    private string BuildStore(string name)
    {
        var path = _temp[$"builds/{name}/store"];
        Directory.CreateDirectory(path);
        return path;
    }

    [Fact]
    public async Task A_copy_given_back_is_the_next_builds_by_rename_and_keeps_the_inputs_files()
    {
        RequireRoot();
        var (store, cache, pool) = Make();
        var input = store.AddTree("one");
        using var use = cache.Use([input]);
        var tree = await cache.EnsureAsync(input.Hash);

        var first = Path.Combine(BuildStore("a"), "aaaa-input");
        var placed = Assert.IsType<LinkedInputPool.Placed>(pool.TryPlace(input.Hash, tree, first));
        Assert.Equal("one", File.ReadAllText(Path.Combine(first, "id")));
        pool.Return(placed);
        Assert.False(Directory.Exists(first));
        Assert.Equal(1, pool.Count);

        var second = Path.Combine(BuildStore("b"), "aaaa-input");
        var again = Assert.IsType<LinkedInputPool.Placed>(pool.TryPlace(input.Hash, tree, second));
        Assert.Equal(placed.Identity, again.Identity); // the same directory, moved
        Assert.Equal(0, pool.Count);
        Assert.Empty(Directory.EnumerateFileSystemEntries(_temp["builds/.linked"]));
        Assert.Equal("#!/bin/sh\necho one\n", File.ReadAllText(Path.Combine(second, "bin", "tool")));
        Assert.Equal((UnixFileMode)Convert.ToInt32("555", 8), File.GetUnixFileMode(second));
        Assert.Equal((UnixFileMode)Convert.ToInt32("555", 8), File.GetUnixFileMode(Path.Combine(second, "bin", "tool")));
        Assert.Equal(new DateTime(1970, 1, 1, 0, 0, 1, DateTimeKind.Utc), Directory.GetLastWriteTimeUtc(second));

        // Another content under the same name never gets this copy: copies are kept by NAR hash.
        var other = store.AddTree("two");
        using var useOther = cache.Use([other]);
        var otherTree = await cache.EnsureAsync(other.Hash);
        pool.Return(again);
        var third = Path.Combine(BuildStore("c"), "aaaa-input");
        Assert.NotNull(pool.TryPlace(other.Hash, otherTree, third));
        Assert.Equal("two", File.ReadAllText(Path.Combine(third, "id")));
        Assert.Equal(1, pool.Count);

        // Nor is a copy ever put over (or into) something already of that name.
        var taken = Path.Combine(BuildStore("d"), "aaaa-input");
        Directory.CreateDirectory(taken);
        Assert.Throws<IOException>(() => pool.TryPlace(input.Hash, tree, taken));
        Assert.Empty(Directory.EnumerateFileSystemEntries(taken));
    }

    [Fact]
    public async Task A_copy_with_no_room_to_go_back_stays_with_its_build_and_the_build_goes_on()
    {
        RequireRoot();
        var store = new MemoryAgentStore();
        // The pool's directory cannot be made (as on a full disk, where CI met it): a file is in its way.
        File.WriteAllText(_temp["builds"], "");
        var pool = new LinkedInputPool(Path.Combine(_temp["builds"], ".linked"));
        var cache = new InputCache(_temp["unpacked"], store, pool);
        var input = store.AddTree("one");
        using var use = cache.Use([input]);
        var tree = await cache.EnsureAsync(input.Hash);

        var buildStore = _temp["elsewhere/store"];
        Directory.CreateDirectory(buildStore);
        var placed = Assert.IsType<LinkedInputPool.Placed>(pool.TryPlace(input.Hash, tree, Path.Combine(buildStore, "aaaa-input")));
        pool.Return(placed); // does not throw
        Assert.Equal(0, pool.Count);
        Assert.True(Directory.Exists(placed.Path));
    }

    [Fact]
    public async Task A_copy_that_is_no_longer_what_Kiln_left_is_not_taken_back()
    {
        RequireRoot();
        var (store, cache, pool) = Make();
        var input = store.AddTree("one");
        using var use = cache.Use([input]);
        var tree = await cache.EnsureAsync(input.Hash);

        // Made writable (as a build user could not, but anything else might have): left where it is.
        var changed = Path.Combine(BuildStore("a"), "aaaa-input");
        var placed = pool.TryPlace(input.Hash, tree, changed)!;
        File.SetUnixFileMode(changed, (UnixFileMode)Convert.ToInt32("755", 8));
        pool.Return(placed);
        Assert.True(Directory.Exists(changed));

        // Owned by someone else, or replaced by another directory — even a read-only one of root's: left too.
        foreach (var owner in new[] { "1000:1000", "0:0" })
        {
            var replaced = Path.Combine(BuildStore($"b{owner[0]}"), "aaaa-input");
            var original = pool.TryPlace(input.Hash, tree, replaced)!;
            Directory.Move(replaced, replaced + "-moved");
            Directory.CreateDirectory(replaced);
            Assert.Equal(0, Processes.Run("chown", [owner, replaced]).ExitCode);
            File.SetUnixFileMode(replaced, (UnixFileMode)Convert.ToInt32("555", 8));
            pool.Return(original);
            Assert.True(Directory.Exists(replaced));
        }

        // Gone altogether: nothing to take.
        var gone = pool.TryPlace(input.Hash, tree, Path.Combine(BuildStore("c"), "aaaa-input"))!;
        Directory.Move(gone.Path, gone.Path + "-moved");
        pool.Return(gone);
        Assert.Equal(0, pool.Count);
    }

    [Fact]
    public async Task The_pool_keeps_at_most_its_bound()
    {
        RequireRoot();
        var (store, cache, pool) = Make(maxCopies: 1);
        var input = store.AddTree("one");
        using var use = cache.Use([input]);
        var tree = await cache.EnsureAsync(input.Hash);
        var a = pool.TryPlace(input.Hash, tree, Path.Combine(BuildStore("a"), "aaaa-input"))!;
        var b = pool.TryPlace(input.Hash, tree, Path.Combine(BuildStore("b"), "aaaa-input"))!;
        pool.Return(a);
        pool.Return(b);
        Assert.Equal(1, pool.Count);
        Assert.False(Directory.Exists(a.Path));
        Assert.True(Directory.Exists(b.Path));
    }

    [Fact]
    public async Task Copies_go_with_their_input_cache_entry()
    {
        RequireRoot();
        var (store, cache, pool) = Make();
        var input = store.AddTree("one");
        var kept = store.AddTree("kept");
        using (cache.Use([input]))
        {
            pool.Return(pool.TryPlace(input.Hash, await cache.EnsureAsync(input.Hash), Path.Combine(BuildStore("a"), "aaaa-input"))!);
        }

        using (cache.Use([kept]))
        {
            pool.Return(pool.TryPlace(kept.Hash, await cache.EnsureAsync(kept.Hash), Path.Combine(BuildStore("b"), "bbbb-kept"))!);
        }

        Assert.Equal(2, pool.Count);

        // The store dropped the first input's NAR: the prune removes its entry and, with it, its copy (which would
        // otherwise keep the entry's files on disk); the other's copy stays.
        store.Nars.Remove(input.Hash);
        Assert.Equal(1, await cache.PruneAsync(CancellationToken.None));
        Assert.Equal(1, pool.Count);
        Assert.Single(Directory.EnumerateFileSystemEntries(_temp["builds/.linked"]));
        Assert.False(Directory.Exists(cache.TreeOf(input.Hash)));
    }
}
