using System.Diagnostics;
using System.Globalization;
using Kiln.Agent;
using Kiln.Nix.Tests.Support;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// kiln-launch, the native program that starts each build, leaves a build in the state the chain of util-linux tools
/// it replaced (unshare, a shell, mount -a, setpriv) does: the same user and group with no supplementary groups, no
/// capabilities and no_new_privs; the build first in line for the OOM killer; its pid in the cgroups; Kiln's mounts in
/// a namespace of its own; exactly descriptors 0–3, 8 and 9 open. Both are run here side by side with the same steps.
/// </summary>
public sealed class LauncherTests : IDisposable
{
    private const int UserId = 30001;
    private const int GroupId = 30000;
    private static readonly string Launcher = Path.Combine(AppContext.BaseDirectory, "native", "kiln-launch");

    private readonly TempDir _temp = new();

    public void Dispose() => _temp.Dispose();

    // Mounts and a change of user need root, as Kiln has when it runs builds as build users.
    private static void RequireRootAndLauncher()
    {
        Assert.SkipUnless(Environment.UserName == "root", "the launcher's mounts and change of user need root");
        Assert.True(File.Exists(Launcher), $"{Launcher} was not built (the tests' build needs a C compiler)");

        // As kiln serve does before it starts any build: what the test host inherited without close-on-exec (a
        // shell's descriptors) must not reach the shell chain, which keeps what it is given.
        Native.CloseInheritedOnExec();
    }

    public static TheoryData<bool> Launchers => new(true, false);

    // What the program the launcher starts sees, printed by a shell about itself.
    private const string Report = """
        echo "ids $(id -u) $(id -g) $(id -G)"
        grep -E '^(Groups|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs):' /proc/$$/status | tr -d ' \t' | sed 's/^/status /'
        echo "oom $(cat /proc/$$/oom_score_adj)"
        find /proc/$$/fd -mindepth 1 -printf 'fd %f %l\n'
        grep -F " $1/" /proc/$$/mountinfo | awk '{ for (i = 7; $i != "-"; i++) { } print "mount " $5 " " $(i + 1) }' | sort
        echo "tmp $(stat -c '%u:%g %a' "$1/tmp") $(cat "$1/tmp/env-file" 2> /dev/null)"
        """;

    private sealed record Run(int ExitCode, string Output, string Errors);

    private static Run Launch(bool native, string[] steps, (int, int)? user, string[] program)
    {
        var start = native
            ? SandboxExecutor.NativeLaunch(Launcher, steps, user)
            : SandboxExecutor.ShellLaunch("/usr/bin/unshare", "/usr/bin/setpriv", steps, user);
        foreach (var argument in program)
        {
            start.ArgumentList.Add(argument);
        }

        start.Environment.Clear();
        start.Environment["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin";
        using var process = Process.Start(start)!;
        var errors = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return new Run(process.ExitCode, File.ReadAllText(steps[1]), errors);
    }

    // A build's steps as Kiln gives them: two cgroup procs files, a terminal (a file here), bwrap's status file, the
    // filter, the network pipe, the fstab Kiln writes, what to copy into the build directory's tmpfs and the tmpfs.
    private string[] Steps(string name, bool mounts, bool seed)
    {
        var root = _temp[name];
        Directory.CreateDirectory(root);
        File.WriteAllText(Path.Combine(root, "procs-a"), "");
        File.WriteAllText(Path.Combine(root, "procs-b"), "");
        File.WriteAllText(Path.Combine(root, "terminal"), "");
        File.WriteAllText(Path.Combine(root, "filter"), "filter");
        Native.MakeFifo(Path.Combine(root, "block"));
        Directory.CreateDirectory(Path.Combine(root, "tmp"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Directory.CreateDirectory(Path.Combine(root, "seed"));
        File.WriteAllText(Path.Combine(root, "seed", "env-file"), "from-kiln");
        // As Kiln leaves a build directory: the build user's, 0700, with what Kiln put in it.
        File.SetUnixFileMode(Path.Combine(root, "seed"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Assert.Equal(0, Processes.Run("chown", ["-R", $"{UserId}:{GroupId}", Path.Combine(root, "seed")]).ExitCode);
        var fstab = "";
        if (mounts)
        {
            SandboxLayout.DevDirectory(Path.Combine(root, "dev"));
            fstab = Path.Combine(root, "fstab");
            File.WriteAllLines(fstab, SandboxExecutor.FstabLines(Path.Combine(root, "dev"), Path.Combine(root, "tmp"), 64 << 20, (UserId, GroupId)));
        }

        return
        [
            $"{Path.Combine(root, "procs-a")} {Path.Combine(root, "procs-b")}", Path.Combine(root, "terminal"), Path.Combine(root, "status"),
            Path.Combine(root, "filter"), Path.Combine(root, "block"), fstab, seed ? Path.Combine(root, "seed") : "", mounts ? Path.Combine(root, "tmp") : "",
        ];
    }

    private static string[] Lines(string output, string prefix) =>
        output.Split('\n').Where(l => l.StartsWith(prefix + " ", StringComparison.Ordinal)).ToArray();

    // The descriptors open in the build. dash's exec leaves a copy of the /dev/null it opened on descriptor 10 (only
    // /dev/null, but more than Nix's builders get): kiln-launch opens exactly these.
    private static string[] Descriptors(string output, bool native) =>
        Lines(output, "fd").Where(l => native || l != "fd 10 /dev/null").ToArray();

    [Theory]
    [MemberData(nameof(Launchers))]
    public void A_root_build_runs_as_its_user_without_privileges_in_its_own_mounts(bool native)
    {
        RequireRootAndLauncher();
        var name = native ? "native" : "shell";
        var steps = Steps(name, mounts: true, seed: true);
        var root = _temp[name];
        var run = Launch(native, steps, (UserId, GroupId), ["/bin/sh", "-c", Report, "report", root]);

        Assert.True(run.ExitCode == 0, $"exit {run.ExitCode}: {run.Errors}{run.Output}");
        Assert.Equal("", run.Errors);
        var output = run.Output;
        Assert.Equal([$"ids {UserId} {GroupId} {GroupId}"], Lines(output, "ids"));
        Assert.Equal(
            ["status Groups:", "status CapInh:0000000000000000", "status CapPrm:0000000000000000", "status CapEff:0000000000000000",
                "status CapAmb:0000000000000000", "status NoNewPrivs:1"],
            Lines(output, "status"));
        Assert.Equal(["oom 1000"], Lines(output, "oom"));
        Assert.Equal(
            ["fd 0 /dev/null", $"fd 1 {root}/terminal", $"fd 2 {root}/terminal", $"fd 3 {root}/status", $"fd 8 {root}/block", $"fd 9 {root}/filter"],
            Descriptors(output, native));

        // /dev's devpts, shm and six device nodes, and the build directory's tmpfs, the build user's, with what Kiln
        // put in the build directory.
        var mounts = Lines(output, "mount");
        Assert.Equal(9, mounts.Length);
        Assert.Contains($"mount {root}/dev/pts devpts", mounts);
        Assert.Contains($"mount {root}/dev/shm tmpfs", mounts);
        Assert.Contains($"mount {root}/tmp tmpfs", mounts);
        Assert.Equal([$"tmp {UserId}:{GroupId} 700 from-kiln"], Lines(output, "tmp"));

        // The launcher's pid is in both procs files (the shell's $$, the process that became the build).
        var pid = File.ReadAllText(Path.Combine(root, "procs-a")).Trim();
        Assert.Matches("^[0-9]+$", pid);
        Assert.Equal(pid, File.ReadAllText(Path.Combine(root, "procs-b")).Trim());

        // Nothing of it is mounted where Kiln is.
        Assert.DoesNotContain(root, File.ReadAllText("/proc/self/mountinfo"), StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Launchers))]
    public void Without_build_users_a_build_keeps_Kiln_s_user_and_mounts_nothing(bool native)
    {
        RequireRootAndLauncher();
        var name = native ? "native" : "shell";
        var steps = Steps(name, mounts: false, seed: false);
        steps[4] = ""; // no network pipe
        var root = _temp[name];
        var run = Launch(native, steps, null, ["/bin/sh", "-c", Report, "report", root]);

        Assert.True(run.ExitCode == 0, $"exit {run.ExitCode}: {run.Errors}{run.Output}");
        Assert.Equal(["ids 0 0 0"], Lines(run.Output, "ids"));
        Assert.Equal(["oom 1000"], Lines(run.Output, "oom"));
        Assert.Equal(["fd 0 /dev/null", $"fd 1 {root}/terminal", $"fd 2 {root}/terminal", $"fd 3 {root}/status", $"fd 9 {root}/filter"], Descriptors(run.Output, native));
        Assert.Empty(Lines(run.Output, "mount"));
    }

    [Theory]
    [MemberData(nameof(Launchers))]
    public void A_mount_that_fails_stops_the_build_before_it_starts(bool native)
    {
        RequireRootAndLauncher();
        var name = native ? "native" : "shell";
        var steps = Steps(name, mounts: true, seed: false);
        Directory.Delete(_temp[$"{name}/dev/pts"]);
        var run = Launch(native, steps, (UserId, GroupId), ["/bin/sh", "-c", "echo started"]);

        Assert.Equal(125, run.ExitCode);
        Assert.Equal("", run.Output);
        Assert.NotEqual("", run.Errors.Trim());
        Assert.False(File.Exists(_temp[$"{name}/status"]));
    }

    [Fact]
    public void Descriptors_the_launcher_inherits_do_not_reach_the_build()
    {
        RequireRootAndLauncher();
        var steps = Steps("inherited", mounts: false, seed: false);
        var root = _temp["inherited"];
        // A parent that leaves descriptor 7 open across exec, as a careless one might.
        var (exit, errors) = RunDirect("/bin/sh", ["-c", "exec 7< /etc/hostname; exec \"$@\"", "parent", Launcher, .. steps, "", "", "/bin/sh", "-c", Report, "report", root]);
        Assert.True(exit == 0, errors);
        Assert.Equal(["fd 0 /dev/null", $"fd 1 {root}/terminal", $"fd 2 {root}/terminal", $"fd 3 {root}/status", $"fd 8 {root}/block", $"fd 9 {root}/filter"],
            Descriptors(File.ReadAllText(steps[1]), native: true));
    }

    [Fact]
    public void Capabilities_Kiln_was_started_with_do_not_reach_the_build()
    {
        RequireRootAndLauncher();
        var steps = Steps("inheritable", mounts: false, seed: false);
        var root = _temp["inheritable"];
        // A Kiln started with an inheritable capability (a container's, a service's): leaving root keeps that set.
        var (exit, errors) = RunDirect("/usr/bin/setpriv", ["--inh-caps", "+net_admin", "--", Launcher, .. steps, UserId.ToString(CultureInfo.InvariantCulture),
            GroupId.ToString(CultureInfo.InvariantCulture), "/bin/sh", "-c", Report, "report", root]);
        Assert.True(exit == 0, errors);
        Assert.Contains("status CapInh:0000000000000000", Lines(File.ReadAllText(steps[1]), "status"));
    }

    [Theory]
    [MemberData(nameof(Launchers))]
    public void A_cgroup_that_cannot_be_joined_stops_the_build_before_it_starts(bool native)
    {
        RequireRootAndLauncher();
        var name = native ? "native" : "shell";
        var steps = Steps(name, mounts: false, seed: false);
        steps[0] = _temp[$"{name}/missing/cgroup.procs"];
        var run = Launch(native, steps, (UserId, GroupId), ["/bin/sh", "-c", "echo started"]);

        Assert.Equal(125, run.ExitCode);
        Assert.Equal("", run.Output);
        Assert.Contains("cgroup.procs", run.Errors, StringComparison.Ordinal);
    }

    [Fact]
    public void A_program_that_cannot_run_says_so_in_the_build_log()
    {
        RequireRootAndLauncher();
        var steps = Steps("missing", mounts: false, seed: false);
        var run = Launch(true, steps, (UserId, GroupId), ["/nonexistent/bwrap"]);

        Assert.Equal(127, run.ExitCode);
        Assert.Equal("kiln-launch: cannot run /nonexistent/bwrap: No such file or directory\n", run.Output);
    }

    [Theory]
    [InlineData("0", "30000", "bad user '0'")]
    [InlineData("30001", "", "a user needs a group")]
    [InlineData("-1", "30000", "bad user '-1'")]
    [InlineData("30001", "30000x", "bad group '30000x'")]
    [InlineData("4294967296", "30000", "bad user '4294967296'")]
    public void The_launcher_refuses_to_run_a_build_as_root_or_a_malformed_user(string uid, string gid, string error)
    {
        RequireRootAndLauncher();
        var steps = Steps("bad", mounts: false, seed: false);
        var (exit, errors) = RunDirect(Launcher, [.. steps, uid, gid, "/bin/sh", "-c", "echo started"]);
        Assert.Equal(125, exit);
        Assert.Equal($"kiln-launch: {error}\n", errors);
        Assert.Equal("", File.ReadAllText(steps[1]));
    }

    // Runs a program directly (the launcher, or a parent that starts it), for its exit status and what it wrote on stderr.
    private static (int ExitCode, string Errors) RunDirect(string program, IEnumerable<string> arguments)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        var errors = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, errors);
    }
}
