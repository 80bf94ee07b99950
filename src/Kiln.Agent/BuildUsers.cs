using System.Collections.Concurrent;

namespace Kiln.Agent;

/// <summary>
/// The unprivileged users builds run as when Kiln runs as root, as Nix's <c>nixbld</c> users: one group
/// (<c>base</c>) and one user per slot (<c>base+1</c> …), each running one build at a time. Outside the sandbox a
/// build is then nobody in particular, not root; inside, files Kiln owns (its inputs) belong to no one it is, as in
/// Nix, so it cannot change them even where they are not mounted read-only. When Kiln is not root, builds run as
/// Kiln's own user (there is no other to become) and every input is a read-only mount.
/// </summary>
public sealed class BuildUsers
{
    private readonly ConcurrentQueue<int> _free = new();

    private BuildUsers(int groupId, int slots)
    {
        GroupId = groupId;
        for (var i = 1; i <= slots; i++)
        {
            _free.Enqueue(groupId + i);
        }
    }

    public int GroupId { get; }

    /// <summary>The pool for this process: null unless it runs as root.</summary>
    public static BuildUsers? ForThisProcess(int baseId, int slots) =>
        Environment.IsPrivilegedProcess && baseId > 0 ? new BuildUsers(baseId, Math.Max(1, slots)) : null;

    /// <summary>A user for one build; dispose it when every process of the build is gone.</summary>
    public Lease Acquire() =>
        _free.TryDequeue(out var uid)
            ? new Lease(this, uid)
            : throw new InvalidOperationException("more builds at once than the executor has slots"); // the scheduler's slots prevent it

    public sealed class Lease(BuildUsers owner, int userId) : IDisposable
    {
        public int UserId => userId;

        public int GroupId => owner.GroupId;

        public void Dispose() => owner._free.Enqueue(userId);
    }
}
