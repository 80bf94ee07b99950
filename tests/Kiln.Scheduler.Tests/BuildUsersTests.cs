using Kiln.Agent;
using Kiln.Nix.Tests.Support;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// Build users are one build's across the host: two pools on one lock directory (as two Kiln processes on one host)
/// never hand out the same uid at once, and a uid comes back when its lease ends. (A second process was found
/// building under the same uid and cgroup as the first when both built one derivation.)
/// </summary>
public class BuildUsersTests
{
    [Fact]
    public void Two_pools_on_one_host_never_lease_the_same_uid_at_once()
    {
        using var locks = new TempDir();
        var first = new BuildUsers(30000, 2, locks.Path);
        var second = new BuildUsers(30000, 2, locks.Path);

        var held = Enumerable.Range(0, 10).Select(_ => first.Acquire()).ToList();
        var others = Enumerable.Range(0, 10).Select(_ => second.Acquire()).ToList();
        Assert.Empty(held.Select(l => l.UserId).Intersect(others.Select(l => l.UserId)));
        Assert.Equal(20, held.Concat(others).Select(l => l.UserId).Distinct().Count());

        var released = held[0].UserId;
        held[0].Dispose();
        foreach (var lease in others)
        {
            lease.Dispose();
        }

        // Every uid the first pool does not hold is the second's again, the released one included.
        var again = Enumerable.Range(0, 57).Select(_ => second.Acquire()).ToList();
        Assert.Contains(released, again.Select(l => l.UserId));
        Assert.Empty(again.Select(l => l.UserId).Intersect(held.Skip(1).Select(l => l.UserId)));
        Assert.Throws<InvalidOperationException>(() => second.Acquire());
    }
}
