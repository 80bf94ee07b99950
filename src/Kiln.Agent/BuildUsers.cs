using System.Collections.Concurrent;
using System.Globalization;

namespace Kiln.Agent;

/// <summary>
/// The unprivileged users builds run as when Kiln runs as root, as Nix's <c>nixbld</c> users: one group
/// (<c>base</c>) and users <c>base+1</c> … , each running one build at a time. Outside the sandbox a build is then
/// nobody in particular, not root; inside, files Kiln owns (its inputs) belong to no one it is, as in Nix, so it
/// cannot change them even where they are not mounted read-only. When Kiln is not root, builds run as Kiln's own
/// user (there is no other to become) and every input is a read-only mount.
/// </summary>
/// <remarks>
/// A uid is one build's, host-wide: another Kiln on the same host (or a second data directory) draws from the same
/// numbers, and two builds under one uid could signal or trace each other. So, as Nix locks its user pool, a lease
/// holds an exclusive lock on <c>/run/kiln/build-users/UID</c>, and a uid another process holds is skipped. The pool
/// is larger than the slots for that reason.
/// </remarks>
public sealed class BuildUsers
{
    /// <summary>Where the host-wide locks live (tmpfs: they vanish with a reboot, as the builds do).</summary>
    public const string DefaultLockDirectory = "/run/kiln/build-users";

    // Spare uids beyond the slots, for when other processes on the host hold some.
    private const int Spare = 64;

    private readonly ConcurrentQueue<int> _free = new();
    private readonly string _locks;

    /// <summary>A pool for <paramref name="slots"/> builds at once, locking uids in <paramref name="lockDirectory"/>.</summary>
    public BuildUsers(int groupId, int slots, string lockDirectory)
    {
        GroupId = groupId;
        _locks = lockDirectory;
        Directory.CreateDirectory(lockDirectory);
        for (var i = 1; i <= Math.Max(1, slots) + Spare; i++)
        {
            _free.Enqueue(groupId + i);
        }
    }

    public int GroupId { get; }

    /// <summary>The pool for this process: null unless it runs as root.</summary>
    public static BuildUsers? ForThisProcess(int baseId, int slots) =>
        Environment.IsPrivilegedProcess && baseId > 0 ? new BuildUsers(baseId, slots, DefaultLockDirectory) : null;

    /// <summary>A user for one build, free in this process and not held by another; dispose it when every process of the build is gone.</summary>
    public Lease Acquire()
    {
        var tried = new List<int>();
        try
        {
            while (_free.TryDequeue(out var uid))
            {
                try
                {
                    var held = new FileStream(Path.Combine(_locks, uid.ToString(CultureInfo.InvariantCulture)), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
                    return new Lease(this, uid, held);
                }
                catch (IOException)
                {
                    tried.Add(uid); // another process builds as this uid
                }
            }
        }
        finally
        {
            foreach (var uid in tried)
            {
                _free.Enqueue(uid);
            }
        }

        throw new InvalidOperationException($"every build user from {GroupId + 1} on is busy (other processes on this host hold the locks in {_locks})");
    }

    public sealed class Lease(BuildUsers owner, int userId, FileStream held) : IDisposable
    {
        public int UserId => userId;

        public int GroupId => owner.GroupId;

        public void Dispose()
        {
            held.Dispose();
            owner._free.Enqueue(userId);
        }
    }
}
