using System.Globalization;

namespace Kiln.Agent;

/// <summary>
/// A control group per build: every process the builder starts lands in it, so Kiln can kill them all and measure
/// CPU time and peak memory, and bound what it uses: memory (its tmpfs files count, as they are memory), processes
/// and CPU time. cgroup v2 (one hierarchy) on most hosts, v1 (memory, cpuacct, pids and cpu hierarchies) on older
/// ones; without either (no permission, say) builds run unmeasured and unbounded and are killed through their PID
/// namespace.
/// </summary>
internal abstract class Cgroup : IDisposable
{
    /// <summary>Where the host's cgroup file systems are mounted; Kiln's groups go in <c>kiln/</c> below it.</summary>
    public const string SystemRoot = "/sys/fs/cgroup";
    private const long CpuPeriodMicroseconds = 100_000;

    /// <summary>The <c>cgroup.procs</c> files a process must write its PID to, to join.</summary>
    public abstract IReadOnlyList<string> ProcsFiles { get; }

    public abstract (TimeSpan User, TimeSpan System)? CpuTime();

    public abstract long? PeakMemory();

    /// <summary>Whether the group can bound memory and processes (a v2 hierarchy may not give Kiln those controllers).</summary>
    public abstract bool Bounds { get; }

    /// <summary>How many times the kernel killed one of the build's processes for going over its memory limit.</summary>
    public abstract long OutOfMemoryKills();

    /// <summary>How many times a fork or clone failed because the build was at its process limit.</summary>
    public long ProcessLimitHits() => Counter(PidsEvents, "max");

    protected abstract string PidsEvents { get; }

    /// <summary>Kills every process in the group, until none is left.</summary>
    public abstract void KillAll();

    public abstract void Dispose();

    /// <summary>Creates a group for one build, bounded by <paramref name="limits"/>, or null when this host gives Kiln no usable cgroups.</summary>
    /// <remarks>
    /// Below the system's root, a v2 hierarchy is used only if it has the memory controller (a hybrid host mounts an
    /// empty one beside its v1 hierarchies); an operator's own root (a delegated subtree) is used as it is.
    /// </remarks>
    public static Cgroup? TryCreate(string root, string name, BuildLimits limits) => TryCreate(root, name, limits, out _);

    /// <summary>As <see cref="TryCreate(string, string, BuildLimits)"/>, saying why there is no group.</summary>
    public static Cgroup? TryCreate(string root, string name, BuildLimits limits, out string? why)
    {
        why = null;
        var made = new List<string>();
        try
        {
            var controllers = Path.Combine(root, "cgroup.controllers");
            if (File.Exists(controllers) && (root != SystemRoot || Words(controllers).Contains("memory")))
            {
                return V2.Create(root, name, limits, made);
            }

            if (V1Controllers.All(c => Directory.Exists(Path.Combine(root, c))))
            {
                return V1.Create(root, name, limits, made);
            }

            why = $"no cgroup v2 hierarchy with the memory controller and no v1 memory, cpuacct and pids hierarchies under {root}";
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            why = e.Message;
            foreach (var group in Enumerable.Reverse(made))
            {
                RemoveDirectory(group); // what was made before the failure does not stay behind
            }
        }

        return null;
    }

    // The most memory all builds together may use (the parent group's limit): what the host keeps for itself is
    // never taken by builds, however many run and however much of theirs sits in tmpfs files no process owns.
    // Read once: a build's group is made on every build's path.
    private static readonly Lazy<long> AllBuildsMemory = new(() => HostMemory.TotalBytes() / 10 * 9);

    // The roots whose kiln/ group already has its controllers enabled (done once, not on every build's path).
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, bool> Prepared = new(StringComparer.Ordinal);

    // The words of a cgroup file that lists controllers (cgroup.controllers, cgroup.subtree_control).
    private static string[] Words(string file) => File.ReadAllText(file).Split(' ', '\n', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>
    /// Kills and removes the groups of builds whose Kiln is gone (a crash leaves their processes — a builder, slirp4netns
    /// — running and their groups behind). A group is named <c>build-PID-…</c> by the Kiln that made it; one whose PID
    /// is not a running process is abandoned. Returns how many were swept.
    /// </summary>
    public static int SweepAbandoned(string root)
    {
        var swept = 0;
        foreach (var parent in V1Controllers.Append("cpu").Select(c => Path.Combine(root, c, "kiln")).Prepend(Path.Combine(root, "kiln")))
        {
            if (!Directory.Exists(parent))
            {
                continue;
            }

            foreach (var group in Directory.EnumerateDirectories(parent, "build-*"))
            {
                var parts = Path.GetFileName(group).Split('-');
                if (parts.Length < 3 || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var owner) || Directory.Exists($"/proc/{owner}"))
                {
                    continue; // not named by a PID (an older Kiln's), or its Kiln still runs
                }

                try
                {
                    KillProcesses(Path.Combine(group, "cgroup.procs"));
                    RemoveDirectory(group);
                    swept++;
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                }
            }
        }

        return swept;
    }

    // The cgroup v1 hierarchies a build's group is made in (v2 has one).
    private static readonly string[] V1Controllers = ["memory", "cpuacct", "pids"];

    // The v2 controllers a build's group is bounded and measured by.
    private static readonly string[] V2Controllers = ["memory", "cpu", "pids"];

    protected static void KillProcesses(string procsFile)
    {
        for (var round = 0; round < 100; round++)
        {
            var pids = File.ReadAllLines(procsFile).Where(l => l.Length > 0).Select(l => int.Parse(l, CultureInfo.InvariantCulture)).ToList();
            if (pids.Count == 0)
            {
                return;
            }

            foreach (var pid in pids)
            {
                _ = Native.Kill(pid, Native.SigKill);
            }

            Thread.Sleep(round < 10 ? 1 : 10);
        }
    }

    protected static void RemoveDirectory(string path)
    {
        for (var attempt = 0; attempt < 50; attempt++)
        {
            try
            {
                if (Directory.Exists(path))
                {
                    Directory.Delete(path); // a cgroup directory is removed with rmdir, its files and all
                }

                return;
            }
            catch (IOException)
            {
                Thread.Sleep(10); // the last process is still exiting
            }
        }
    }

    private static long ReadLong(string path) => long.Parse(File.ReadAllText(path).Trim(), CultureInfo.InvariantCulture);

    // A "name value" line of a cgroup's flat-keyed file (memory.events, pids.events, memory.oom_control); 0 if absent.
    private static long Counter(string file, string name)
    {
        if (!File.Exists(file))
        {
            return 0;
        }

        foreach (var line in File.ReadLines(file))
        {
            var parts = line.Split(' ');
            if (parts.Length == 2 && parts[0] == name && long.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var value))
            {
                return value;
            }
        }

        return 0;
    }

    private static void Write(string directory, string file, long value) =>
        File.WriteAllText(Path.Combine(directory, file), value.ToString(CultureInfo.InvariantCulture));

    // cgroup v1: a group per controller hierarchy. cpu (for the quota) is often mounted with cpuacct as one.
    private sealed class V1(string memory, string cpu, string pids, string? quota) : Cgroup
    {
        public static V1 Create(string root, string name, BuildLimits limits, List<string> made)
        {
            var dirs = V1Controllers.Select(c => Path.Combine(root, c, "kiln", name)).ToArray();
            foreach (var dir in dirs)
            {
                Directory.CreateDirectory(dir);
                made.Add(dir);
            }

            var (memory, cpu, pids) = (dirs[0], dirs[1], dirs[2]);
            string? quota = null;
            if (limits.Cores > 0 && Directory.Exists(Path.Combine(root, "cpu")))
            {
                quota = Path.Combine(root, "cpu", "kiln", name);
                Directory.CreateDirectory(quota);
                made.Add(quota);
                Write(quota, "cpu.cfs_period_us", CpuPeriodMicroseconds);
                Write(quota, "cpu.cfs_quota_us", limits.Cores * CpuPeriodMicroseconds);
            }

            if (limits.MemoryBytes > 0)
            {
                var parent = Path.GetDirectoryName(memory)!;
                var all = Math.Max(limits.MemoryBytes, AllBuildsMemory.Value);
                Write(parent, "memory.limit_in_bytes", all);
                Write(memory, "memory.limit_in_bytes", limits.MemoryBytes);
                if (File.Exists(Path.Combine(memory, "memory.memsw.limit_in_bytes")))
                {
                    // With swap accounting on, memory plus swap is held to the same limit: a build does not spill into swap.
                    Write(parent, "memory.memsw.limit_in_bytes", all);
                    Write(memory, "memory.memsw.limit_in_bytes", limits.MemoryBytes);
                }
            }

            if (limits.Processes > 0)
            {
                Write(pids, "pids.max", limits.Processes);
            }

            return new V1(memory, cpu, pids, quota);
        }

        public override IReadOnlyList<string> ProcsFiles =>
            new[] { memory, cpu, pids, quota }.OfType<string>().Distinct().Select(d => Path.Combine(d, "cgroup.procs")).ToList();

        protected override string PidsEvents => Path.Combine(pids, "pids.events");

        public override bool Bounds => true;

        public override long OutOfMemoryKills() => Counter(Path.Combine(memory, "memory.oom_control"), "oom_kill");

        public override (TimeSpan User, TimeSpan System)? CpuTime() =>
            (TimeSpan.FromTicks(ReadLong(Path.Combine(cpu, "cpuacct.usage_user")) / 100),
             TimeSpan.FromTicks(ReadLong(Path.Combine(cpu, "cpuacct.usage_sys")) / 100));

        public override long? PeakMemory() => ReadLong(Path.Combine(memory, "memory.max_usage_in_bytes"));

        public override void KillAll() => KillProcesses(Path.Combine(pids, "cgroup.procs"));

        public override void Dispose()
        {
            KillAll();
            RemoveDirectory(memory);
            RemoveDirectory(cpu);
            RemoveDirectory(pids);
            if (quota is not null)
            {
                RemoveDirectory(quota);
            }
        }
    }

    // cgroup v2: one group; a limit is written where its controller is enabled (a test's cgroup2 mount on a v1 host
    // has none of them).
    private sealed class V2(string path) : Cgroup
    {
        public static V2 Create(string root, string name, BuildLimits limits, List<string> made)
        {
            var parent = Path.Combine(root, "kiln");
            Directory.CreateDirectory(parent);
            // Let the builds' groups account and bound memory, CPU and processes: those of the three the root offers,
            // each on its own (one the kernel refuses does not take the others with it).
            if (!Prepared.ContainsKey(root))
            {
                foreach (var controller in V2Controllers.Where(Words(Path.Combine(root, "cgroup.controllers")).Contains))
                {
                    if (!Words(Path.Combine(parent, "cgroup.controllers")).Contains(controller))
                    {
                        EnableBelow(root, controller);
                    }

                    if (!Words(Path.Combine(parent, "cgroup.subtree_control")).Contains(controller))
                    {
                        File.WriteAllText(Path.Combine(parent, "cgroup.subtree_control"), "+" + controller);
                    }
                }

                Prepared[root] = true;
            }

            var path = Path.Combine(parent, name);
            Directory.CreateDirectory(path);
            made.Add(path);
            if (limits.MemoryBytes > 0 && File.Exists(Path.Combine(path, "memory.max")))
            {
                Write(parent, "memory.max", Math.Max(limits.MemoryBytes, AllBuildsMemory.Value));
                Write(path, "memory.max", limits.MemoryBytes);
                if (File.Exists(Path.Combine(path, "memory.swap.max")))
                {
                    Write(path, "memory.swap.max", 0); // the limit is the build's memory, not memory plus the host's swap
                }
            }

            if (limits.Processes > 0 && File.Exists(Path.Combine(path, "pids.max")))
            {
                Write(path, "pids.max", limits.Processes);
            }

            if (limits.Cores > 0 && File.Exists(Path.Combine(path, "cpu.max")))
            {
                File.WriteAllText(Path.Combine(path, "cpu.max"), string.Create(CultureInfo.InvariantCulture, $"{limits.Cores * CpuPeriodMicroseconds} {CpuPeriodMicroseconds}"));
            }

            return new V2(path);
        }

        // Enables a controller for the root's children. A root that is not the hierarchy's own (a subtree delegated to
        // Kiln, as systemd's Delegate=yes makes) may not have processes of its own and enable controllers below it
        // ("no internal processes"): Kiln's own processes there move to a leaf group, kiln-server, first.
        private static void EnableBelow(string root, string controller)
        {
            var control = Path.Combine(root, "cgroup.subtree_control");
            try
            {
                File.WriteAllText(control, "+" + controller);
            }
            catch (IOException) when (File.Exists(Path.Combine(root, "cgroup.type")))
            {
                var leaf = Path.Combine(root, "kiln-server");
                Directory.CreateDirectory(leaf);
                foreach (var pid in File.ReadAllLines(Path.Combine(root, "cgroup.procs")).Where(l => l.Length > 0))
                {
                    try
                    {
                        File.WriteAllText(Path.Combine(leaf, "cgroup.procs"), pid);
                    }
                    catch (IOException)
                    {
                        // Gone meanwhile.
                    }
                }

                File.WriteAllText(control, "+" + controller);
            }
        }

        public override IReadOnlyList<string> ProcsFiles => [Path.Combine(path, "cgroup.procs")];

        protected override string PidsEvents => Path.Combine(path, "pids.events");

        public override bool Bounds => File.Exists(Path.Combine(path, "memory.max")) && File.Exists(Path.Combine(path, "pids.max"));

        public override long OutOfMemoryKills() => Counter(Path.Combine(path, "memory.events"), "oom_kill");

        public override (TimeSpan User, TimeSpan System)? CpuTime()
        {
            var stat = File.ReadAllLines(Path.Combine(path, "cpu.stat")).Select(l => l.Split(' ')).Where(p => p.Length == 2)
                .ToDictionary(p => p[0], p => long.Parse(p[1], CultureInfo.InvariantCulture));
            return (TimeSpan.FromTicks(stat.GetValueOrDefault("user_usec") * 10), TimeSpan.FromTicks(stat.GetValueOrDefault("system_usec") * 10));
        }

        public override long? PeakMemory() => File.Exists(Path.Combine(path, "memory.peak")) ? ReadLong(Path.Combine(path, "memory.peak")) : null;

        public override void KillAll()
        {
            var kill = Path.Combine(path, "cgroup.kill");
            if (File.Exists(kill))
            {
                File.WriteAllText(kill, "1");
            }

            KillProcesses(Path.Combine(path, "cgroup.procs"));
        }

        public override void Dispose()
        {
            KillAll();
            RemoveDirectory(path);
        }
    }
}

/// <summary>The few system calls .NET does not offer as such.</summary>
internal static partial class Native
{
    public const int SigKill = 9;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "rename", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int RenameNative(string from, string to);

    /// <summary>rename(2), for files, symlinks and directories alike; false if it failed.</summary>
    public static bool Rename(string from, string to) => RenameNative(from, to) == 0;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "link", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int LinkNative(string existing, string created);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);

    /// <summary>
    /// Marks every descriptor this process was started with (beyond 0–2) close-on-exec. .NET opens its own that
    /// way, but descriptors inherited from whoever started Kiln are not, and every child (bubblewrap, and the
    /// builder under it) would inherit them: Nix closes all but its own before a builder starts, so Kiln must too.
    /// </summary>
    public static void CloseInheritedOnExec()
    {
        const int GetFlags = 1, SetFlags = 2, CloseOnExec = 1; // F_GETFD, F_SETFD, FD_CLOEXEC
        foreach (var entry in Directory.EnumerateFileSystemEntries("/proc/self/fd").ToList())
        {
            if (int.TryParse(Path.GetFileName(entry), out var fd) && fd > 2 && Fcntl(fd, GetFlags, 0) is var flags and >= 0 && (flags & CloseOnExec) == 0)
            {
                Fcntl(fd, SetFlags, flags | CloseOnExec);
            }
        }
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int OpenNative(string path, int flags);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(int fd, ulong request);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int CloseNative(int fd);

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "mkfifo", SetLastError = true, StringMarshalling = System.Runtime.InteropServices.StringMarshalling.Utf8)]
    private static partial int MakeFifoNative(string path, uint mode);

    private const int CloseOnExec = 0x80000; // O_CLOEXEC: no child inherits the descriptor

    /// <summary>open(2) for reading, close-on-exec.</summary>
    public static int OpenReadOnly(string path) => Open(path, CloseOnExec); // O_RDONLY is 0

    /// <summary>open(2) for reading and writing, close-on-exec (for a named pipe: Kiln is then a writer its readers see go when it dies).</summary>
    public static int OpenReadWrite(string path) => Open(path, 0x2 | CloseOnExec); // O_RDWR

    private static int Open(string path, int flags)
    {
        var fd = OpenNative(path, flags);
        return fd >= 0 ? fd : throw new IOException($"cannot open '{path}': error {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
    }

    /// <summary>The parent of a user namespace (ioctl NS_GET_PARENT), as a new close-on-exec descriptor; -1 if it has none Kiln may see.</summary>
    public static int NamespaceParent(int fd) => Ioctl(fd, 0xb702);

    public static void Close(int fd) => CloseNative(fd);

    /// <summary>The text of a symbolic link (for /proc's namespace links, which .NET cannot resolve).</summary>
    public static string? ReadLink(string path) => new FileInfo(path).LinkTarget;

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint WriteNative(int fd, ReadOnlySpan<byte> buffer, nuint count);

    /// <summary>
    /// Writes a byte to a named pipe without waiting for a reader: with none (the reader is gone) it fails at once
    /// instead of blocking forever.
    /// </summary>
    public static void Poke(string fifo)
    {
        const int WriteOnlyNonBlocking = 0x1 | 0x800 | CloseOnExec; // O_WRONLY | O_NONBLOCK
        var fd = OpenNative(fifo, WriteOnlyNonBlocking);
        if (fd < 0)
        {
            throw new IOException($"nothing reads '{fifo}' any more: error {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
        }

        try
        {
            if (WriteNative(fd, "x"u8, 1) != 1)
            {
                throw new IOException($"cannot write to '{fifo}': error {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
            }
        }
        finally
        {
            CloseNative(fd);
        }
    }

    /// <summary>mkfifo(3), mode 0600.</summary>
    public static void MakeFifo(string path)
    {
        if (MakeFifoNative(path, 0x180) != 0)
        {
            throw new IOException($"cannot make the pipe '{path}': error {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
        }
    }

    /// <summary>link(2).</summary>
    public static void Link(string existing, string created)
    {
        if (LinkNative(existing, created) != 0)
        {
            throw new IOException($"cannot link '{created}' to '{existing}': error {System.Runtime.InteropServices.Marshal.GetLastPInvokeError()}");
        }
    }
}
