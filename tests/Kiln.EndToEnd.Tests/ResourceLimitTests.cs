using System.Globalization;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// 20.1: every build is bounded by its cgroup (memory, processes, CPU) and its in-memory file systems are no bigger
/// than its memory. A hostile tenant's memory hog, /tmp filler and fork bomb each fail alone, with a message that says
/// which limit they hit, while another account's build succeeds beside them.
/// </summary>
public class ResourceLimitTests(ITestOutputHelper output)
{
    private const string Socket = NixClient.SocketUri;
    private const long LimitMib = 256;

    [Fact]
    public async Task A_memory_hog_a_tmp_filler_and_a_fork_bomb_fail_alone_while_another_accounts_build_succeeds()
    {
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess(ssh: true, arguments: ["--build-memory", $"{LimitMib}MiB", "--build-processes", "300", "--timeout", "120", "--max-jobs", "4"]);
        using var workspace = client.NewWorkspace();
        var bob = SshTests.NewLogin(client, kiln, "bob");
        client.Ok(kiln, "nix-build", "--store", Socket, Dag.WriteSingle(client, workspace, "warm", "echo warm; mkdir $out"), "--no-out-link");
        var before = kiln.PeakMemoryKib();

        // Asks for 4 GiB in doublings (16 times its limit): busybox awk holds the string.
        var hog = Dag.WriteSingle(client, workspace, "hog", "${bb}/bin/busybox awk 'BEGIN { s = \"0123456789abcdef\"; for (i = 0; i < 28; i++) s = s s; print length(s) }' && mkdir $out");
        // 10 GB into /tmp.
        var filler = Dag.WriteSingle(client, workspace, "filler", "head -c 10000000000 /dev/zero > /tmp/big; echo wrote; mkdir $out");
        // Doubles its processes until the limit, then a loop that needs one more process fails.
        var bomb = Dag.WriteSingle(client, workspace, "bomb", "f() { f | f & }; f; sleep 2; while :; do sleep 600 & done");
        var hostile = new[] { hog, filler, bomb }.Select(file => Task.Run(() => client.Run(kiln, "nix-build", "--store", Socket, file, "--no-out-link"))).ToList();

        // Bob's build, over SSH as another account, while those run: it sees its file systems at the limit's size.
        var sizes = Dag.WriteSingle(client, workspace, "sizes", $"echo {Guid.NewGuid()}; df -k /tmp $TMPDIR /dev/shm | sed 's/^/DF /'; mkdir $out");
        var built = await Task.Run(() => client.Ok(kiln, [.. bob.Environment, "nix-build", "--store", "ssh-ng://kiln@127.0.0.1", sizes, "--no-out-link"]));
        var results = await Task.WhenAll(hostile);
        foreach (var (name, result) in new[] { "hog", "filler", "bomb" }.Zip(results))
        {
            output.WriteLine($"--- {name}: exit {result.ExitCode}\n{result.Stderr}");
        }

        Assert.NotEqual(0, results[0].ExitCode);
        Assert.Contains($"for going over its memory limit of {LimitMib} MiB", results[0].Stderr, StringComparison.Ordinal);
        Assert.NotEqual(0, results[1].ExitCode);
        Assert.DoesNotContain("wrote", results[1].Stderr, StringComparison.Ordinal);
        Assert.True(results[1].Stderr.Contains("No space left on device", StringComparison.Ordinal) ||
                    results[1].Stderr.Contains($"memory limit of {LimitMib} MiB", StringComparison.Ordinal), results[1].Stderr);
        Assert.NotEqual(0, results[2].ExitCode);
        Assert.Contains("at its limit of 300 processes at once", results[2].Stderr, StringComparison.Ordinal);

        // Every in-memory file system of the build is the build's memory at most.
        output.WriteLine(built.Stderr);
        var lines = built.Stderr.Split('\n').Where(l => l.StartsWith("DF ", StringComparison.Ordinal)).Skip(1)
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1..]).ToList();
        Assert.Equal(3, lines.Count);
        Assert.All(lines, l => Assert.Equal((LimitMib * 1024).ToString(CultureInfo.InvariantCulture), l[1]));
        Assert.All(lines, l => Assert.Equal("tmpfs", l[0].Replace("none", "tmpfs", StringComparison.Ordinal)));

        // All builds together are held under 90% of the host's memory (the parent group), whatever each may use.
        var parent = "/sys/fs/cgroup/memory/kiln/memory.limit_in_bytes";
        if (File.Exists(parent))
        {
            var expected = Kiln.Agent.HostMemory.TotalBytes() / 10 * 9;
            Assert.InRange(long.Parse(File.ReadAllText(parent).Trim(), CultureInfo.InvariantCulture), expected - 4096, expected);
        }

        var grownMib = (kiln.PeakMemoryKib() - before) / 1024;
        output.WriteLine($"kiln serve's peak RSS grew by {grownMib} MiB");
        Assert.True(grownMib < 150, $"kiln serve's peak memory grew by {grownMib} MiB");
    }

    [Fact]
    public async Task On_cgroup_v2_a_builds_group_holds_its_processes_is_killed_as_one_and_is_removed()
    {
        // These hosts mount cgroup v1; the test mounts a cgroup2 hierarchy of its own and points Kiln at it. The
        // controllers it offers are those v1 leaves free (on a v1 host none of memory, cpu and pids, so those limits
        // are checked only where the kernel offers them); groups, membership, cpu.stat and cgroup.kill are v2's core.
        NixClient.RequireEndToEnd();
        using var root = new TempDir();
        var mount = Processes.Run("mount", ["-t", "cgroup2", "none", root.Path]);
        Assert.SkipWhen(mount.ExitCode != 0, $"this kernel gives no cgroup2 mount here: {mount.Stderr}");
        try
        {
            var offered = File.ReadAllText(Path.Combine(root.Path, "cgroup.controllers")).Trim();
            output.WriteLine($"cgroup2 controllers offered: '{offered}'");
            var client = NixClient.For("2.8.0");
            using (var kiln = new KilnProcess(arguments: ["--cgroup-root", root.Path, "--timeout", "6", "--build-memory", $"{LimitMib}MiB", "--build-processes", "300"]))
            {
                using var workspace = client.NewWorkspace();
                var sleeper = Dag.WriteSingle(client, workspace, "sleeper", $"echo {Guid.NewGuid()}; sleep 600 & sleep 600; mkdir $out");
                var build = Task.Run(() => client.Run(kiln, "nix-build", "--store", Socket, sleeper, "--no-out-link"));

                // The build's group appears under kiln/, with the sandbox's processes (the two sleeps among them).
                var kilnGroups = Path.Combine(root.Path, "kiln");
                string? group = null;
                var deadline = DateTime.UtcNow.AddSeconds(30);
                while (DateTime.UtcNow < deadline && (group is null || File.ReadAllLines(Path.Combine(group, "cgroup.procs")).Length < 3))
                {
                    group = Directory.Exists(kilnGroups) ? Directory.GetDirectories(kilnGroups, "build-*").FirstOrDefault() : null;
                    Thread.Sleep(100);
                }

                Assert.NotNull(group);
                var members = File.ReadAllLines(Path.Combine(group, "cgroup.procs"));
                Assert.Contains(members, pid => File.ReadAllText($"/proc/{pid}/cmdline").StartsWith("sleep\0600", StringComparison.Ordinal));
                // Where the mount gives Kiln no memory controller, the operator is told at start that builds are unbounded.
                Assert.True(offered.Split(' ').Contains("memory") || kiln.WaitForLog("builds run without memory and process limits"), kiln.Log);
                if (offered.Split(' ').Contains("memory"))
                {
                    Assert.Equal((LimitMib << 20).ToString(CultureInfo.InvariantCulture), File.ReadAllText(Path.Combine(group, "memory.max")).Trim());
                }

                if (offered.Split(' ').Contains("pids"))
                {
                    Assert.Equal("300", File.ReadAllText(Path.Combine(group, "pids.max")).Trim());
                }

                // The timeout kills the whole group (the background sleep too), and the group goes.
                var result = await build;
                Assert.Contains("timed out after 6 seconds", result.Stderr, StringComparison.Ordinal);
                Assert.All(members, pid => Assert.False(Directory.Exists($"/proc/{pid}") && File.ReadAllText($"/proc/{pid}/cmdline").StartsWith("sleep", StringComparison.Ordinal), $"process {pid} survived"));
                deadline = DateTime.UtcNow.AddSeconds(10);
                while (Directory.Exists(group) && DateTime.UtcNow < deadline)
                {
                    Thread.Sleep(50);
                }

                Assert.False(Directory.Exists(group), $"{group} is still there");
            }
        }
        finally
        {
            var kilnGroups = Path.Combine(root.Path, "kiln");
            if (Directory.Exists(kilnGroups))
            {
                foreach (var left in Directory.GetDirectories(kilnGroups))
                {
                    Directory.Delete(left);
                }

                Directory.Delete(kilnGroups);
            }

            Assert.Equal(0, Processes.Run("umount", [root.Path]).ExitCode);
        }
    }
}
