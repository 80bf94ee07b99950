using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;

namespace Kiln.Agent;

/// <summary>
/// The embedded agent: runs each build in a bubblewrap sandbox laid out as Nix's (see <see cref="SandboxLayout"/>),
/// in its own cgroup, with the log read from a pseudo-terminal, then hands the outputs to
/// <see cref="OutputProcessor"/>. Inputs come from an <see cref="InputCache"/> unpacked once per NAR hash; outputs are
/// adopted into that cache, so the next build that needs them finds them unpacked.
/// </summary>
public sealed class SandboxExecutor : IBuildExecutor
{
    private readonly SandboxOptions _options;
    private readonly IAgentStore _store;
    private readonly InputCache _inputs;
    private readonly LinkedInputPool _linked;
    private readonly string _sharedDev;
    private readonly string _sharedTmpfs;
    private readonly BuildUsers? _users;
    private readonly string _builds;
    private readonly string _etc;
    private readonly string _seccomp;
    private readonly string? _launcher;
    private readonly DiskGuard _disk;

    // bubblewrap before 0.7 has no --size: its tmpfs are then unbounded (the cgroup's memory limit still holds).
    private readonly bool _tmpfsSize;
    private long _counter;

    public SandboxExecutor(SandboxOptions options, IAgentStore store)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
        _store = store;
        _builds = Path.Combine(options.WorkDirectory, "builds");
        _linked = new LinkedInputPool(Path.Combine(_builds, ".linked"));
        _sharedDev = Path.Combine(_builds, ".dev");
        _sharedTmpfs = Path.Combine(_builds, ".build-tmpfs");
        _inputs = new InputCache(Path.Combine(options.WorkDirectory, "unpacked"), store, _linked);
        _users = BuildUsers.ForThisProcess(options.BuildUsersBase, options.MaxJobs);
        // As root, a build must run as a build user: as Kiln itself, uid 1000 in the sandbox would be root outside it.
        // When build users cannot work here, builds are refused (with the fix), never run as root.
        if (_users is not null && UnreachableAncestor(Path.GetFullPath(options.WorkDirectory)) is { } closed)
        {
            BuildUsersUnavailable = $"'{closed}' is not searchable by others, so build users cannot reach the build directories: run 'chmod o+x {closed}' " +
                "(or give kiln serve a data directory build users can reach) and restart Kiln";
            _users = null;
        }
        else if (_users is not null && !File.Exists(options.Setpriv))
        {
            BuildUsersUnavailable = $"'{options.Setpriv}' is missing, so builds cannot switch to a build user: install util-linux and restart Kiln";
            _users = null;
        }
        _etc = Path.Combine(options.WorkDirectory, "sandbox-etc");
        _seccomp = Path.Combine(options.WorkDirectory, "seccomp.bpf");
        _launcher = options.Launcher is { } launcher && File.Exists(launcher) && File.GetUnixFileMode(launcher).HasFlag(UnixFileMode.UserExecute) ? launcher : null;
        LauncherNote = _launcher is null
            ? $"'{options.Launcher}' is missing or not executable (Kiln was built without a C compiler): builds start through unshare, a shell, mount and setpriv instead, " +
              "a few milliseconds slower each; install a C compiler (cc or clang) and rebuild Kiln"
            : null;
        _disk = new DiskGuard(options.WorkDirectory, options.MinFreeDisk);
        Native.CloseInheritedOnExec();
        CleanUp();
        _tmpfsSize = BubblewrapHasSize(options.Bubblewrap);
        ResourceLimitsNote = ProbeLimits(options.CgroupRoot) ?? (_tmpfsSize ? null :
            $"'{options.Bubblewrap}' is older than bubblewrap 0.7, which added --size: a build's /tmp and /dev/shm are bounded by its " +
            "memory limit only, not by their own size; install bubblewrap 0.7 or later");
    }

    // `bwrap --version` prints "bubblewrap 0.8.0".
    private static bool BubblewrapHasSize(string bubblewrap)
    {
        try
        {
            using var process = Process.Start(new ProcessStartInfo(bubblewrap, "--version") { RedirectStandardOutput = true, UseShellExecute = false });
            var text = process?.StandardOutput.ReadToEnd() ?? "";
            process?.WaitForExit();
            var version = text.Split(' ', StringSplitOptions.RemoveEmptyEntries).LastOrDefault()?.Trim();
            return Version.TryParse(version, out var parsed) && parsed >= new Version(0, 7);
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false; // no bubblewrap: builds fail with their own clear message
        }
    }

    /// <summary>Why builds here cannot be bounded by memory and processes (and how to fix it), or null if they can.</summary>
    public string? ResourceLimitsNote { get; }

    // Makes (and removes) a group as a build's would be, to tell the operator at start when builds would run unbounded.
    private static string? ProbeLimits(string root)
    {
        using var probe = Cgroup.TryCreate(root, $"build-{Environment.ProcessId}-probe", new BuildLimits { Cores = 1, MemoryBytes = 1L << 30, Processes = 1000 }, out var why);
        return probe switch
        {
            null => $"builds run without memory, process and CPU limits: Kiln cannot make cgroups under {root} ({why}); " +
                    "run Kiln as root, or give it a cgroup v2 subtree of its own (systemd Delegate=yes) with --cgroup-root",
            { Bounds: false } => $"builds run without memory and process limits: the cgroup v2 hierarchy under {root} does not give Kiln's groups " +
                                 "the memory and pids controllers; give Kiln a subtree that has them with --cgroup-root",
            _ => null,
        };
    }

    public int Slots => _options.MaxJobs;

    /// <summary>Removes unpacked inputs whose NAR the store dropped and no build uses; returns how many went.</summary>
    public Task<int> PruneInputsAsync(CancellationToken cancellationToken) => _inputs.PruneAsync(cancellationToken);

    /// <summary>The unpacked inputs' size (by NAR size).</summary>
    public long InputCacheBytes => _inputs.Bytes;

    /// <summary>What the operator should know about fixed-output builds' network here, or null.</summary>
    public string? FixedOutputNetworkNote =>
        _options.FixedOutputNetwork.Isolated && _users is not null && !FixedOutputNetwork.TunOpenToAll()
            ? "/dev/net/tun is not open to all users (stock Debian makes it 0666), so slirp4netns, which gives fixed-output builds their network, " +
              "runs as root (with every capability dropped, in a mount namespace of its own) instead of as the build's user: run 'chmod 0666 /dev/net/tun'"
            : null;

    /// <summary>
    /// Why builds cannot run as build users although Kiln is root, and how to fix it; null if they can (or Kiln is not
    /// root, when builds run as its own unprivileged user). While set, every build is refused.
    /// </summary>
    public string? BuildUsersUnavailable { get; }

    /// <summary>Why builds start through the slower chain of util-linux tools rather than kiln-launch; null when they do not.</summary>
    public string? LauncherNote { get; }

    // The first directory on the way to the work directory that a build user cannot pass through: bubblewrap runs as
    // the build user and must reach the build directory and the unpacked inputs it mounts.
    private static string? UnreachableAncestor(string path)
    {
        for (var directory = new DirectoryInfo(path); directory is not null; directory = directory.Parent)
        {
            if (directory.Exists && (directory.UnixFileMode & UnixFileMode.OtherExecute) == 0)
            {
                return directory.FullName;
            }
        }

        return null;
    }

    // Leftovers of builds a crash interrupted (their directories, and the processes and groups of any Kiln on this
    // host that died), and the files every sandbox shares.
    private void CleanUp()
    {
        Cgroup.SweepAbandoned(_options.CgroupRoot);
        if (Directory.Exists(_builds))
        {
            NarExtractor.DeleteTree(_builds);
        }

        _inputs.DeleteLeftovers();
        _inputs.Index();
        foreach (var directory in new[] { _builds, _etc, _inputs.Root })
        {
            Directory.CreateDirectory(directory);
            KeepToBuilds(directory);
        }

        if (_users is not null)
        {
            SandboxLayout.DevDirectory(_sharedDev);
            Directory.CreateDirectory(_sharedTmpfs, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }

        foreach (var (name, contents) in SandboxLayout.EtcFiles)
        {
            File.WriteAllText(Path.Combine(_etc, name), contents);
        }

        File.WriteAllBytes(_seccomp, SyscallFilter.Program());
    }

    // What builds read (every account's unpacked inputs, the build directories, the sandbox's /etc) is root's and the
    // build group's only (0750, as Nix's store is root:nixbld): other local users cannot list or read it. Without build
    // users, Kiln's own (0700).
    private void KeepToBuilds(string directory)
    {
        if (_users is not null)
        {
            ChangeOwner(directory, 0, _users.GroupId);
            File.SetUnixFileMode(directory, (UnixFileMode)Convert.ToInt32("750", 8));
        }
        else
        {
            File.SetUnixFileMode(directory, (UnixFileMode)Convert.ToInt32("700", 8));
        }
    }

    public async Task<BuildOutcome> BuildAsync(BuildJob job, IBuildLog log, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(job);
        ArgumentNullException.ThrowIfNull(log);
        var start = DateTimeOffset.UtcNow;
        if (BuildUsersUnavailable is { } why)
        {
            return BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"Kiln refuses to build '{job.DrvPath}' as root: {why}") with { StartTime = start, StopTime = start };
        }

        var id = $"{job.DrvPath.HashPart}-{Interlocked.Increment(ref _counter)}";
        var directory = Path.Combine(_builds, id);
        try
        {
            var outcome = await RunAsync(job, log, directory, id, cancellationToken).ConfigureAwait(false);
            return outcome with { StartTime = start, StopTime = DateTimeOffset.UtcNow };
        }
        finally
        {
            // The build let go of its inputs: room for the next ones, least recently used first.
            _inputs.Trim(_options.InputCacheBytes);

            // Off the build's path: the sandbox leaves a mount point behind for every input, and the slot, the
            // build's dependents and the client need not wait for them to go.
            _ = Task.Run(() => DeleteBuildDirectory(directory), CancellationToken.None);
        }
    }

    private static void ChangeOwner(string path, int owner, int group) =>
        Posix.SetOwnerAt(Posix.AtFdCwd, Posix.CString(path), (uint)owner, (uint)group, () => path);

    // Removes a tree under the builds directory (a build's, a linked copy) as far as it can; what cannot go now is left
    // for the clean-up at the next start, which clears the builds directory.
    internal static void DeleteBuildDirectory(string directory)
    {
        try
        {
            // (A build chooses its names and depth: DeleteTree removes what .NET cannot name, so nothing is left that
            // would stop the next start.)
            NarExtractor.DeleteTree(directory);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Left for the clean-up at the next start.
        }
    }

    private async Task<BuildOutcome> RunAsync(BuildJob job, IBuildLog log, string directory, string id, CancellationToken cancellationToken)
    {
        var derivation = job.Derivation;
        if (derivation.Outputs.Values.Any(o => o.StorePath is null))
        {
            return BuildOutcome.Failed(BuildFailureKind.InputRejected, $"derivation '{job.DrvPath}' has content-addressed outputs, which Kiln does not build yet (ca-derivations)");
        }

        BuildEnvironment environment;
        try
        {
            environment = BuildEnvironment.Create(job, _options.ImpureEnvironment);
        }
        catch (BuildSetupException e)
        {
            return BuildOutcome.Failed(BuildFailureKind.InputRejected, e.Message);
        }

        // A built-in builder runs in the same sandbox as any fixed-output builder, as Kiln's own program.
        SandboxLayout.Command? command = null;
        if (derivation.Builder.StartsWith("builtin:", StringComparison.Ordinal))
        {
            if (BuiltinFetcher.Refusal(job) is { } refusal)
            {
                return BuildOutcome.Failed(BuildFailureKind.InputRejected, refusal);
            }

            if (_options.Fetcher is not { } fetcher)
            {
                return BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"this Kiln agent cannot run '{derivation.Builder}' (it was started without a fetcher)");
            }

            command = fetcher.SandboxCommand();
        }

        if (derivation.IsFixedOutput && _options.FixedOutputNetwork.Isolated && !File.Exists(_options.FixedOutputNetwork.Slirp4netns))
        {
            return BuildOutcome.Failed(BuildFailureKind.MiscFailure,
                $"Kiln cannot give the fixed-output derivation '{job.DrvPath}' its network: '{_options.FixedOutputNetwork.Slirp4netns}' is missing " +
                "(install slirp4netns, or start kiln serve with --fod-network host to give such builds the host's network as stock Nix does)");
        }

        // The build's own user, if Kiln is root and has users to give builds; released once the build is over.
        using var user = _users?.Acquire();
        var buildDir = Path.Combine(directory, "build");
        var storeDir = Path.Combine(directory, "store");
        Directory.CreateDirectory(buildDir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Directory.CreateDirectory(storeDir);
        File.SetUnixFileMode(storeDir, (UnixFileMode)Convert.ToInt32("1775", 8));
        foreach (var (name, contents) in environment.Files)
        {
            await File.WriteAllBytesAsync(Path.Combine(buildDir, name), contents, cancellationToken).ConfigureAwait(false);
        }

        if (user is not null)
        {
            // As Nix: the build directory and what Kiln put in it are the build user's; the store is root's, with
            // the build group allowed to add to it (1775), so the build cannot remove what it did not make.
            foreach (var entry in Directory.EnumerateFileSystemEntries(buildDir).Append(buildDir))
            {
                ChangeOwner(entry, user.UserId, user.GroupId);
            }

            ChangeOwner(storeDir, 0, user.GroupId);
        }

        // Taken before any input is looked at: a prune must not remove what this build is about to mount.
        using var inUse = _inputs.Use(job.Inputs.Select(i => (i.NarHash, i.NarSize)).ToList());
        var inputs = new List<(Kiln.Nix.StorePaths.StorePath Path, string Tree)>();
        var linked = new List<(string Tree, LinkedInputPool.Placed Placed)>();
        var over = false;
        try
        {
            foreach (var input in job.Inputs)
            {
                var tree = await _inputs.EnsureAsync(input.NarHash).ConfigureAwait(false);
                if ((user is null ? null : _linked.TryPlace(input.NarHash, tree, Path.Combine(storeDir, input.Path.BaseName))) is { } placed)
                {
                    linked.Add((tree, placed));
                }
                else
                {
                    inputs.Add((input.Path, tree)); // mounted
                }
            }

            var run = await RunSandboxAsync(job, environment, command, directory, buildDir, storeDir, inputs, linked, id, user, log,
                cancellationToken).ConfigureAwait(false);
            over = true;
            if (run.Failure != BuildFailureKind.None)
            {
                return run;
            }

            try
            {
                var outputs = OutputProcessor.Process(job, environment.Structured, storeDir, _store, user?.UserId);
                foreach (var (output, tree) in outputs)
                {
                    _inputs.Adopt(output.NarHash, output.NarSize, tree);
                }

                return run with { Outputs = outputs.Select(o => o.Output).ToList() };
            }
            catch (Exception e) when (e is OutputProcessor.RejectedException or HashMismatchException)
            {
                return run with { Failure = BuildFailureKind.OutputRejected, ErrorMessage = e.Message };
            }
        }
        finally
        {
            // Once the sandbox has ended (its processes with it), its linked inputs go back for the next build, still
            // under this build's lease on their entries. Cut short, they go with the build directory.
            foreach (var (_, placed) in over ? linked : [])
            {
                _linked.Return(placed);
            }
        }
    }

    private async Task<BuildOutcome> RunSandboxAsync(BuildJob job, BuildEnvironment environment, SandboxLayout.Command? command, string directory, string buildDir,
        string storeDir, IReadOnlyList<(Kiln.Nix.StorePaths.StorePath Path, string Tree)> inputs, IReadOnlyList<(string Tree, LinkedInputPool.Placed Placed)> linked, string id,
        BuildUsers.Lease? user, IBuildLog log, CancellationToken cancellationToken)
    {
        var derivation = job.Derivation;
        var ownNetwork = derivation.IsFixedOutput && _options.FixedOutputNetwork.Isolated;
        var statusFile = Path.Combine(directory, "status.json");
        var block = ownNetwork ? Path.Combine(directory, "network-block") : "";
        if (ownNetwork)
        {
            Native.MakeFifo(block);
        }

        // As root, Kiln builds /dev as Nix's; its mounts are made by the launcher in a mount namespace of its own, on
        // the one skeleton every build shares (made at start: each build's mounts are its own namespace's, and the
        // skeleton is root's, read-only to builds).
        var dev = user is not null ? _sharedDev : null;

        // As root, the build directory is a tmpfs too, the build memory's size at most, mounted by the launcher in its
        // own mount namespace (gone with the build's last process, even if Kiln is killed) with what Kiln put in it —
        // on a mount point every build shares, as /dev's.
        var memory = job.Limits.MemoryBytes;
        var buildTmpfs = dev is not null && memory > 0 ? _sharedTmpfs : null;

        var arguments = SandboxLayout.BubblewrapArguments(derivation, environment, buildTmpfs ?? buildDir, storeDir, inputs, _etc, _options.SandboxPaths,
            hostNetwork: !_options.FixedOutputNetwork.Isolated, command, dev, _tmpfsSize ? memory : 0);

        var fstab = dev is null ? null : Mounts(dev, buildTmpfs, memory, user!);
        using var pty = Pty.Open();
        // Named by this process too: another Kiln on the host may build the same derivation at the same moment.
        using var cgroup = Cgroup.TryCreate(_options.CgroupRoot, $"build-{Environment.ProcessId}-{id}", job.Limits);

        // The launcher joins the cgroup first, so every process the build starts is in it, makes the build the
        // kernel's first choice when the host runs out of memory (a build user cannot lower it again), (as root) mounts
        // /dev's devpts, shm and device nodes and the build directory in a mount namespace of its own (the build's
        // fstab), becomes the build user, then bwrap with the terminal as stdout and stderr, bwrap's status report on
        // descriptor 3 and the syscall filter, which bwrap reads and closes, on descriptor 9. Like Nix, stdin is
        // /dev/null and the terminal are open read-write. A sandbox that waits for its network reads descriptor 8
        // (bwrap closes it), a pipe Kiln writes to when it is up. kiln-launch does this in one process; without it, a
        // chain of unshare, a shell, mount(8) and setpriv does (about 5 ms more a build).
        string[] steps =
        [
            string.Join(' ', cgroup?.ProcsFiles ?? []), pty.SlavePath, statusFile, _seccomp, block, fstab ?? "",
            // (Nothing to copy into the tmpfs when Kiln put nothing in the build directory: the mount is owned and
            // moded as the directory would be.)
            environment.Files.Count > 0 ? buildDir : "", buildTmpfs ?? "",
        ];
        (int, int)? ids = user is null ? null : (user.UserId, user.GroupId);
        var start = _launcher is not null ? NativeLaunch(_launcher, steps, ids) : ShellLaunch(_options.Unshare, _options.Setpriv, steps, ids);

        start.ArgumentList.Add(_options.Bubblewrap);
        start.ArgumentList.Add("--seccomp");
        start.ArgumentList.Add("9");
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        start.Environment.Clear();
        start.Environment["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin";

        var tail = new LogTail(job.Limits.MaxLogSize, log);
        // What the build writes to disk: its store directory but the inputs linked there, and its build directory
        // unless that is a tmpfs (counted as memory).
        using var disk = new DiskMeter(_disk.Start(), buildTmpfs is null ? [storeDir, buildDir] : [storeDir], await LinkedBytesAsync(linked).ConfigureAwait(false),
            linked.Select(l => Path.GetFileName(l.Placed.Path)).ToHashSet(StringComparer.Ordinal));
        using var process = await ProcessParent.StartAsync(start).ConfigureAwait(false); // bwrap dies with the thread that forks it
        var reader = Task.Factory.StartNew(() => tail.ReadAll(pty), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        var wrapperErrors = process.StandardError.ReadToEndAsync(CancellationToken.None);
        var (network, networkError) = ownNetwork ? await ConnectNetworkAsync(process, statusFile, directory, block, cgroup, user, cancellationToken).ConfigureAwait(false) : (null, null);
        using var networkLease = network;
        var (failure, message) = networkError is null
            ? await WatchAsync(job, process, tail, cgroup, disk, cancellationToken).ConfigureAwait(false)
            : await StopWithoutNetworkAsync(job, process, cgroup, wrapperErrors, networkError, cancellationToken).ConfigureAwait(false);
        await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
        cgroup?.KillAll();
        pty.CloseSlave();
        await reader.ConfigureAwait(false);
        if (failure == BuildFailureKind.None && tail.LimitExceeded.IsCompleted)
        {
            // The builder wrote past the limit and exited before the watch looked. Nix reads all of a builder's
            // output before it reaps it, so for Nix this is a log-limit failure too.
            (failure, message) = (BuildFailureKind.LogLimitExceeded, LogLimitMessage(job));
        }

        if (failure == BuildFailureKind.None && await disk.FinalCheckAsync(job).ConfigureAwait(false) is { } overDisk)
        {
            // Written faster than the watch looked: the limit holds all the same.
            (failure, message) = overDisk;
        }

        var cpu = cgroup?.CpuTime();
        var outcome = new BuildOutcome
        {
            CpuUser = cpu?.User,
            CpuSystem = cpu?.System,
            PeakMemoryBytes = cgroup?.PeakMemory(),
            OutOfMemory = cgroup?.OutOfMemoryKills() > 0,
            LogTail = tail.LastLines,
        };
        if (failure != BuildFailureKind.None)
        {
            return outcome with { Failure = failure, ErrorMessage = message + ResourceNote(job, cgroup) };
        }

        cancellationToken.ThrowIfCancellationRequested();
        var started = File.Exists(statusFile) && (await File.ReadAllTextAsync(statusFile, CancellationToken.None).ConfigureAwait(false)).Contains("child-pid", StringComparison.Ordinal);
        if (!started)
        {
            var why = (await wrapperErrors.ConfigureAwait(false)).Trim();
            return outcome with
            {
                Failure = BuildFailureKind.MiscFailure,
                ErrorMessage = $"Kiln could not start the sandbox for '{job.DrvPath}': {(why.Length > 0 ? why : (tail.LastLines.Count > 0 ? tail.LastLines[^1] : null) ?? $"exit status {process.ExitCode}")}",
            };
        }

        if (process.ExitCode != 0)
        {
            return outcome with
            {
                Failure = derivation.IsFixedOutput ? BuildFailureKind.TransientFailure : BuildFailureKind.PermanentFailure,
                ErrorMessage = $"builder for '{job.DrvPath}' {ExitDescription(process.ExitCode)}{ResourceNote(job, cgroup)}",
                ExitCode = process.ExitCode,
            };
        }

        return outcome;
    }

    // kiln-launch STEPS… UID GID bwrap…: see native/kiln-launch.c for each step. The steps: the cgroups' procs files
    // (space-separated), the terminal, bwrap's status file, the syscall filter, the network pipe, the fstab, what to
    // copy into the build directory's tmpfs and that tmpfs; each may be empty but the terminal, status and filter.
    internal static ProcessStartInfo NativeLaunch(string launcher, string[] steps, (int UserId, int GroupId)? user)
    {
        var start = new ProcessStartInfo(launcher) { UseShellExecute = false, RedirectStandardError = true };
        foreach (var step in steps)
        {
            start.ArgumentList.Add(step);
        }

        start.ArgumentList.Add(user?.UserId.ToString(CultureInfo.InvariantCulture) ?? "");
        start.ArgumentList.Add(user?.GroupId.ToString(CultureInfo.InvariantCulture) ?? "");
        return start;
    }

    // The same steps through util-linux and a shell, where kiln-launch was not built.
    internal static ProcessStartInfo ShellLaunch(string unshare, string setpriv, string[] steps, (int UserId, int GroupId)? user)
    {
        var start = new ProcessStartInfo(user is null ? "/bin/sh" : unshare) { UseShellExecute = false, RedirectStandardError = true };
        if (user is not null)
        {
            start.ArgumentList.Add("--mount");
            start.ArgumentList.Add("--propagation");
            start.ArgumentList.Add("private");
            start.ArgumentList.Add("/bin/sh");
        }

        start.ArgumentList.Add("-c");
        start.ArgumentList.Add("""
            for f in $1; do echo $$ > "$f" || exit 125; done; pty=$2; status=$3; filter=$4; block=$5; fstab=$6; seed=$7; tmp=$8; shift 8
            echo 1000 > /proc/self/oom_score_adj
            if [ -n "$fstab" ]; then mount -a -T "$fstab" || exit 125; fi
            if [ -n "$tmp" ] && [ -n "$seed" ]; then cp -a "$seed/." "$tmp/" || exit 125; fi
            if [ -n "$block" ]; then exec "$@" 3>"$status" 9<"$filter" 8<>"$block" <>/dev/null 1<>"$pty" 2>&1; fi
            exec "$@" 3>"$status" 9<"$filter" <>/dev/null 1<>"$pty" 2>&1
            """);
        start.ArgumentList.Add("kiln-build");
        foreach (var step in steps)
        {
            start.ArgumentList.Add(step);
        }

        if (user is { } u)
        {
            // The build's user from here on: no capabilities, no way back, and no gaining privileges (as Nix).
            start.ArgumentList.Add(setpriv);
            foreach (var argument in new[] { "--reuid", u.UserId.ToString(CultureInfo.InvariantCulture), "--regid", u.GroupId.ToString(CultureInfo.InvariantCulture), "--clear-groups", "--no-new-privs", "--" })
            {
                start.ArgumentList.Add(argument);
            }
        }

        return start;
    }

    // Why a failed build may have failed that its builder's exit status does not say: it hit the limits Kiln set.
    private static string ResourceNote(BuildJob job, Cgroup? cgroup)
    {
        if (cgroup is null)
        {
            return "";
        }

        var notes = new List<string>();
        if (cgroup.OutOfMemoryKills() is > 0 and var killed)
        {
            notes.Add($"the kernel killed {Plural(killed, "process", "processes")} of it for going over its memory limit of {job.Limits.MemoryBytes / (1024 * 1024)} MiB " +
                "(memory used by its processes and by files in /tmp, the build directory and /dev/shm together)");
        }

        if (cgroup.ProcessLimitHits() is > 0 and var refused)
        {
            notes.Add($"it was refused {Plural(refused, "new process", "new processes")} at its limit of {job.Limits.Processes} processes at once");
        }

        return notes.Count == 0 ? "" : $"; {string.Join("; ", notes)}";
    }

    private static string Plural(long count, string one, string many) => string.Create(CultureInfo.InvariantCulture, $"{count} {(count == 1 ? one : many)}");

    // Waits for the sandbox's first process (bwrap reports it on its status descriptor), connects its network namespace,
    // and lets it run. Returns the network to release when the build ends, or why there is none.
    private async Task<(IDisposable? Network, string? Error)> ConnectNetworkAsync(Process process, string statusFile, string directory, string block, Cgroup? cgroup,
        BuildUsers.Lease? user, CancellationToken cancellationToken)
    {
        var waited = Stopwatch.StartNew();
        int? child = null;
        while (child is null)
        {
            if (process.HasExited || cancellationToken.IsCancellationRequested)
            {
                return (null, "the sandbox ended before its network was up");
            }

            if (waited.Elapsed > TimeSpan.FromSeconds(30))
            {
                return (null, "the sandbox did not start within 30 seconds");
            }

            child = ChildPid(statusFile);
            if (child is null)
            {
                await Task.Delay(2, CancellationToken.None).ConfigureAwait(false);
            }
        }

        IDisposable network;
        try
        {
            network = await FixedOutputNetwork.AttachAsync(_options.FixedOutputNetwork, child.Value, directory, cgroup?.ProcsFiles ?? [],
                user is null ? null : (user.UserId, user.GroupId), _options.Setpriv, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or System.ComponentModel.Win32Exception or OperationCanceledException)
        {
            return (null, e.Message);
        }

        try
        {
            Native.Poke(block);
        }
        catch (IOException e)
        {
            network.Dispose();
            return (null, e.Message);
        }

        return (network, null);
    }

    // A sandbox whose network could not be connected never ran its builder: it is stopped, and the build fails with why
    // (or as cancelled, when cancellation is what stopped the connecting), through the same end as any other stop.
    private static async Task<(BuildFailureKind, string)> StopWithoutNetworkAsync(BuildJob job, Process process, Cgroup? cgroup, Task<string> wrapperErrors,
        string networkError, CancellationToken cancellationToken)
    {
        cgroup?.KillAll();
        KillTree(process);
        await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
        if (cancellationToken.IsCancellationRequested)
        {
            return (BuildFailureKind.MiscFailure, "the build was cancelled");
        }

        var why = (await wrapperErrors.ConfigureAwait(false)).Trim();
        return (BuildFailureKind.MiscFailure, $"Kiln could not give the fixed-output derivation '{job.DrvPath}' its network: {(why.Length > 0 ? why : networkError)}");
    }

    // The child-pid bwrap writes first on its status descriptor, once the child exists.
    private static int? ChildPid(string statusFile)
    {
        try
        {
            var text = File.ReadAllText(statusFile);
            var at = text.IndexOf("\"child-pid\":", StringComparison.Ordinal);
            if (at < 0)
            {
                return null;
            }

            var digits = new string(text[(at + 12)..].SkipWhile(char.IsWhiteSpace).TakeWhile(char.IsAsciiDigit).ToArray());
            return int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out var pid) && text.Contains('}', StringComparison.Ordinal) ? pid : null;
        }
        catch (FileNotFoundException)
        {
            return null;
        }
    }

    private static void KillTree(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
        }
    }

    // bwrap exits with the builder's status, or 128 + the signal that killed it.
    private static string ExitDescription(int status) =>
        status > 128 && status < 128 + 65
            ? $"failed due to signal {status - 128} ({SignalName(status - 128)})"
            : $"failed with exit code {status}";

    private static string SignalName(int signal) => signal switch
    {
        1 => "Hangup",
        2 => "Interrupt",
        6 => "Aborted",
        9 => "Killed",
        11 => "Segmentation fault",
        13 => "Broken pipe",
        15 => "Terminated",
        _ => $"signal {signal}",
    };

    private static string LogLimitMessage(BuildJob job) => LimitMessages.LogTooLong(job, job.Limits.MaxLogSize);

    // Waits for the builder, enforcing the timeouts and the log limit and honouring cancellation: any of them kills
    // every process of the build.
    private static async Task<(BuildFailureKind, string)> WatchAsync(BuildJob job, Process process, LogTail tail, Cgroup? cgroup, DiskMeter disk,
        CancellationToken cancellationToken)
    {
        var started = Stopwatch.StartNew();
        var limits = job.Limits;
        var exited = process.WaitForExitAsync(CancellationToken.None);
        var cancelled = Task.Delay(Timeout.Infinite, cancellationToken);
        while (true)
        {
            var wait = Task.Delay(TimeSpan.FromMilliseconds(200), CancellationToken.None);
            if (await Task.WhenAny(exited, wait, tail.LimitExceeded, cancelled).ConfigureAwait(false) == exited)
            {
                return (BuildFailureKind.None, "");
            }

            (BuildFailureKind, string)? stop = null;
            if (cancellationToken.IsCancellationRequested)
            {
                stop = (BuildFailureKind.MiscFailure, "the build was cancelled");
            }
            else if (tail.LimitExceeded.IsCompleted)
            {
                stop = (BuildFailureKind.LogLimitExceeded, LogLimitMessage(job));
            }
            else if (limits.Timeout > TimeSpan.Zero && started.Elapsed > limits.Timeout)
            {
                stop = (BuildFailureKind.TimedOut, LimitMessages.TimedOut(job, limits.Timeout));
            }
            else if (limits.MaxSilentTime > TimeSpan.Zero && tail.SilentFor > limits.MaxSilentTime)
            {
                stop = (BuildFailureKind.TimedOut, LimitMessages.Silent(job, limits.MaxSilentTime));
            }
            else
            {
                stop = disk.Poll(job);
            }

            if (stop is { } reason)
            {
                cgroup?.KillAll();
                KillTree(process);
                return reason;
            }
        }
    }

    // The mounts a root build's launcher makes, in fstab(5) form for `mount -a -T`: /dev's devpts, its shm, the
    // device nodes Nix gives a build, and (with a memory limit) the build directory's tmpfs, owned by the build user.
    // Every tmpfs is the build's memory at most. Returns the file's path: one file for all builds with the same user
    // and memory (their mount points are shared), written by the first.
    private string Mounts(string dev, string? buildTmpfs, long memory, BuildUsers.Lease user)
    {
        var fstab = Path.Combine(_builds, string.Create(CultureInfo.InvariantCulture, $".fstab-{user.UserId}-{user.GroupId}-{memory}{(buildTmpfs is null ? "" : "-tmpfs")}"));
        if (File.Exists(fstab))
        {
            return fstab;
        }

        // Whole or not at all: another build may read it the moment it is there.
        var temp = $"{fstab}.{Guid.NewGuid():N}";
        File.WriteAllLines(temp, FstabLines(dev, buildTmpfs, memory, (user.UserId, user.GroupId)));
        File.Move(temp, fstab, overwrite: true);
        return fstab;
    }

    // Both launchers read it: mount(8) as fstab(5), kiln-launch with getmntent(3), taking "bind" alone as a bind mount
    // and anything else as the file system's own options.
    internal static List<string> FstabLines(string dev, string? buildTmpfs, long memory, (int UserId, int GroupId) user)
    {
        var size = memory > 0 ? string.Create(CultureInfo.InvariantCulture, $",size={memory}") : "";
        var lines = new List<string>
        {
            $"devpts {FstabField(Path.Combine(dev, "pts"))} devpts newinstance,mode=0620,ptmxmode=0666 0 0",
            $"none {FstabField(Path.Combine(dev, "shm"))} tmpfs mode=1777{size} 0 0",
        };
        lines.AddRange(SandboxLayout.Devices.Select(n => $"/dev/{n} {FstabField(Path.Combine(dev, n))} none bind 0 0"));
        if (buildTmpfs is not null)
        {
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"none {FstabField(buildTmpfs)} tmpfs mode=0700{size},uid={user.UserId},gid={user.GroupId} 0 0"));
        }

        return lines;
    }

    // fstab(5) escapes whitespace and the backslash in a field as octal (a data directory may be named with spaces).
    private static string FstabField(string path) =>
        path.Replace("\\", "\\134", StringComparison.Ordinal).Replace(" ", "\\040", StringComparison.Ordinal)
            .Replace("\t", "\\011", StringComparison.Ordinal).Replace("\n", "\\012", StringComparison.Ordinal);

    // What the inputs linked into a build's store directory count for du (the same files, hard-linked): measured once
    // per input, not per build, and taken off every build's count.
    private readonly ConcurrentDictionary<NixHash, Lazy<Task<long>>> _linkedBytes = new();

    private async Task<long> LinkedBytesAsync(IReadOnlyList<(string Tree, LinkedInputPool.Placed Placed)> linked)
    {
        long total = 0;
        foreach (var (tree, placed) in linked)
        {
            // (A linked input is small, and Kiln's own tree: counted here, not by a du of its own.)
            total += await _linkedBytes.GetOrAdd(placed.NarHash, _ => new Lazy<Task<long>>(async () => DiskUsage.CountSettled([tree], InputLinks.MaxEntries)
                ?? (await DiskUsage.MeasureAsync([tree], TimeSpan.FromSeconds(60), CancellationToken.None).ConfigureAwait(false)).Bytes ?? 0)).Value.ConfigureAwait(false);
        }

        return total;
    }

    // Measures a running build's disk usage now and then: as often as a count allows — every 250 ms, or 20 times as
    // long as the last count took, at most every 10 s — and once more when the builder exits. While the build's tree
    // is small it is counted in kiln serve, a few system calls (a du process costs milliseconds of both cores' time:
    // under load most trivial builds outlive 250 ms, and that du was most of what watching them cost); once the tree
    // is past RunningEntries, or a walk fails twice in a row (an entry gone under it), du counts it in the background
    // from then on (in its own process, so a build with many files slows neither kiln serve nor the watch of its other
    // limits).
    private sealed class DiskMeter(DiskGuard.Watch watch, string[] roots, long linkedBytes, IReadOnlySet<string> linkedNames) : IDisposable
    {
        private static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);

        // The most entries the final count walks in kiln serve before it leaves the count to du.
        private const int SettledEntries = 4096;

        // The most entries a count while the build runs walks in kiln serve (about a millisecond's work, every 250 ms).
        private const int RunningEntries = 1024;
        private readonly CancellationTokenSource _stop = new();
        private readonly Stopwatch _since = Stopwatch.StartNew();
        private TimeSpan _interval = TimeSpan.FromMilliseconds(250);
        private Task<DiskUsage.Count>? _counting;
        private int _walkMisses; // the in-process walks in a row that gave no figure

        public (BuildFailureKind, string)? Poll(BuildJob job)
        {
            if (_counting is null)
            {
                if (_since.Elapsed < _interval)
                {
                    return null;
                }

                if (_walkMisses < 2)
                {
                    // The walk leaves out the linked inputs, as the final count does: the build cannot change, remove
                    // or replace them (root's 0555 copies in its sticky store directory). It runs on the watch's
                    // thread, so its own time spaces the counts out as du's does.
                    var walk = Stopwatch.StartNew();
                    var walked = DiskUsage.CountSettled(roots, RunningEntries, linkedNames);
                    _since.Restart();
                    _interval = Next(walk.Elapsed);
                    if (walked is { } bytes)
                    {
                        _walkMisses = 0;
                        return Judge(job, new DiskUsage.Count(bytes, walk.Elapsed, false), linkedCounted: 0, final: false);
                    }

                    // Too many entries, or the tree changed under the walk (a temporary file gone, which du would
                    // have stepped over): once more at the next count, then du from then on.
                    if (++_walkMisses < 2)
                    {
                        return null;
                    }
                }

                _counting = DiskUsage.MeasureAsync(roots, Deadline, _stop.Token);
                return null;
            }

            if (!_counting.IsCompleted)
            {
                return null;
            }

            var count = _counting.Result;
            _counting = null;
            _since.Restart();
            _interval = Next(count.Took);
            return Judge(job, count, linkedBytes, final: false);
        }

        // Every 250 ms, or 20 times as long as the last count took, at most every 10 s.
        private static TimeSpan Next(TimeSpan took) => TimeSpan.FromTicks(Math.Clamp(took.Ticks * 20, TimeSpan.TicksPerSecond / 4, TimeSpan.TicksPerSecond * 10));

        // After the builder exited: its own limit only (whether the disk is short is for builds still writing).
        public async Task<(BuildFailureKind, string)?> FinalCheckAsync(BuildJob job)
        {
            if (_counting is not null)
            {
                await _counting.ConfigureAwait(false);
            }

            // The build's processes are gone, so nothing changes the tree while it is counted: a small one is counted
            // here, anything larger by du as while it ran. The linked inputs are not walked (a build cannot change
            // root's 0555 copies, nor remove or replace them in its sticky store directory), so that count holds
            // none of their bytes; du's holds them all.
            return DiskUsage.CountSettled(roots, SettledEntries, linkedNames) is { } bytes
                ? Judge(job, new DiskUsage.Count(bytes, TimeSpan.Zero, false), linkedCounted: 0, final: true)
                : Judge(job, await DiskUsage.MeasureAsync(roots, Deadline, _stop.Token).ConfigureAwait(false), linkedBytes, final: true);
        }

        // linkedCounted: the linked inputs' bytes the count holds, which are not the build's writes.
        private (BuildFailureKind, string)? Judge(BuildJob job, DiskUsage.Count count, long linkedCounted, bool final)
        {
            if (count.TimedOut)
            {
                // Files du cannot count in a minute are too many to let through unmeasured.
                return (BuildFailureKind.PermanentFailure, LimitMessages.DiskUncountable(job, Deadline));
            }

            if (count.Bytes is not { } bytes)
            {
                return null; // du failed outright: the last figure stands
            }

            var used = Math.Max(0, bytes - linkedCounted);
            if (job.Limits.DiskBytes > 0 && used > job.Limits.DiskBytes)
            {
                return (BuildFailureKind.PermanentFailure, LimitMessages.DiskLimit(job, used, job.Limits.DiskBytes));
            }

            // Not the build's fault alone, so not a permanent failure: it may be built again once there is space.
            return !final && watch.Update(used) ? (BuildFailureKind.MiscFailure, LimitMessages.DiskShort(job, used)) : null;
        }

        public void Dispose()
        {
            _stop.Cancel();
            _stop.Dispose();
            watch.Dispose();
        }
    }
}
