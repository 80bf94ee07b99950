using System.Text.RegularExpressions;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.EndToEnd.Tests;

/// <summary>Real clients build through Kiln's socket: DAGs, logs, failures, and builds shared between clients.</summary>
public class BuildTests
{
    private const string Kiln = NixClient.SocketUri;

    private static async Task<IReadOnlyList<BuildRecord>> BuildRecordsAsync(KilnProcess kiln)
    {
        await using var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db"));
        return await metadata.ListBuildsAsync(null, 100_000, CancellationToken.None);
    }

    [Fact]
    public void As_root_without_working_build_users_Kiln_refuses_to_build_and_says_how_to_fix_it()
    {
        // 19.7 (on 8b92d5f Kiln warned and built as itself, so uid 1000 in the sandbox was root outside it): the data
        // directory's parent is closed to others, so build users cannot reach their build directories.
        var client = NixClient.For("2.8.0");
        using var closed = new Kiln.Nix.Tests.Support.TempDir();
        File.SetUnixFileMode(closed.Path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        using var kiln = new KilnProcess(dataDirectory: closed["data"]);
        using var workspace = client.NewWorkspace();
        var single = Dag.WriteSingle(client, workspace, "refused", $"echo {Guid.NewGuid()}; mkdir $out");
        var result = client.Run(kiln, "nix-build", "--store", Kiln, single, "--no-out-link");
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("Kiln refuses to build", result.Stderr, StringComparison.Ordinal);
        Assert.Contains($"chmod o+x {closed.Path}", result.Stderr, StringComparison.Ordinal);
        Assert.Contains("builds are refused", kiln.Log, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task A_200_derivation_dag_builds_and_building_it_again_builds_nothing(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var dag = Dag.Write(client, workspace, "dag");

        // QueryMissing names every derivation to be built, not just the ones asked for.
        var dryRun = client.Ok(kiln, "nix-build", "--dry-run", "--store", Kiln, dag);
        var listed = Regex.Matches(dryRun.Stderr, @"/nix/store/[a-z0-9]{32}-dag-[0-9]+-[0-9]+\.drv").Select(m => m.Value).Distinct();
        Assert.Equal(200, listed.Count());
        Assert.Empty(await BuildRecordsAsync(kiln));

        client.Ok(kiln, "nix", "build", "--store", Kiln, "-f", dag, "--no-link");
        var builds = await BuildRecordsAsync(kiln);
        Assert.Equal(200, builds.Count);
        Assert.All(builds, b => Assert.True(b.Succeeded, b.Error));
        Assert.Equal(200, builds.Select(b => b.DrvPath).Distinct().Count());

        // The outputs are in the store (unpacked for unix:// clients), naming their inputs.
        var top = Directory.GetDirectories(Path.Combine(kiln.StoreRoot, "nix", "store"), "*-dag-9-0").Single();
        var deps = File.ReadAllLines(Path.Combine(top, "deps"));
        Assert.Equal(3, deps.Length);
        Assert.All(deps, d => Assert.Matches("^/nix/store/[a-z0-9]{32}-dag-8-[0-9]+$", d));

        client.Ok(kiln, "nix", "build", "--store", Kiln, "-f", dag, "--no-link");
        Assert.Equal(200, (await BuildRecordsAsync(kiln)).Count);
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task With_a_local_eval_store_the_client_copies_the_derivations_and_Kiln_builds_them(string version)
    {
        var client = NixClient.For(version);
        if (client.Is23)
        {
            Assert.Skip("Nix 2.3 has no --eval-store (it evaluates into the store it builds in)");
        }

        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var dag = Dag.Write(client, workspace, "evaldag", depth: 4, width: 5, salt: Guid.NewGuid().ToString("N"));

        // The client evaluates into its own store, copies the .drv closure to Kiln, and asks Kiln to build it.
        client.Ok(kiln, "nix", "build", "--eval-store", "auto", "--store", Kiln, "-f", dag, "--no-link");
        var builds = await BuildRecordsAsync(kiln);
        Assert.Equal(20, builds.Count);
        Assert.All(builds, b => Assert.True(b.Succeeded, b.Error));

        // The top outputs are in Kiln's store, not the client's.
        var top = Directory.GetDirectories(Path.Combine(kiln.StoreRoot, "nix", "store"), "*-dag-3-*");
        Assert.Equal(5, top.Length);
        Assert.Empty(Directory.GetDirectories(client.HostPath("/nix/store"), Path.GetFileName(top[0])));

        // The outputs' paths come back to the client: it can ask Kiln for them.
        var paths = client.Ok(kiln, "nix", "path-info", "--eval-store", "auto", "--store", Kiln, "-f", dag);
        Assert.Equal(5, paths.StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);

        client.Ok(kiln, "nix", "build", "--eval-store", "auto", "--store", Kiln, "-f", dag, "--no-link");
        Assert.Equal(20, (await BuildRecordsAsync(kiln)).Count);
    }

    [Fact]
    public void A_builder_that_never_ends_a_line_does_not_grow_the_server()
    {
        // 20.1: every byte of an unended line was kept (a builder writing /dev/zero for 25 s grew kiln serve to
        // 3.2 GiB); now a line is kept to 1 MiB and marked as cut. 200 MB of NULs in one line here (under the default log limit).
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        client.Ok(kiln, "nix-build", "--store", Kiln, Dag.WriteSingle(client, workspace, "warm", "echo warm; mkdir $out"), "--no-out-link");
        var before = kiln.PeakMemoryKib();
        var zeros = Dag.WriteSingle(client, workspace, "zeros", "head -c 200000000 /dev/zero; echo; echo after the long line; mkdir $out");
        var built = client.Ok(kiln, "nix-build", "--store", Kiln, zeros, "--no-out-link");
        var grownMib = (kiln.PeakMemoryKib() - before) / 1024;
        Assert.True(grownMib < 150, $"kiln serve's peak memory grew by {grownMib} MiB for one long line");
        Assert.Contains("after the long line", built.Stderr, StringComparison.Ordinal);
        Assert.Contains("[line cut by Kiln: longer than 1 MiB]", built.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void A_build_outlives_the_thread_that_started_its_sandbox()
    {
        // bwrap runs with --die-with-parent: the kernel kills it when the *thread* that forked it ends. Started from a
        // thread-pool thread, a build was killed (signal 9) whenever the pool retired that thread, which it does after
        // 20 s idle: CI saw a 50 MB log's build die at random. Here the pool retires idle threads after 50 ms.
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess(ssh: true, environment: new Dictionary<string, string> { ["DOTNET_ThreadPool_ThreadTimeoutMs"] = "50" });
        using var workspace = client.NewWorkspace();
        var slow = Dag.WriteSingle(client, workspace, "slow", $"echo {Guid.NewGuid():N}; sleep 4; echo still here; mkdir $out");
        var built = client.Run(kiln, "nix-build", "--store", Kiln, slow, "--no-out-link");
        Assert.True(built.ExitCode == 0, built.Stderr);
        Assert.Contains("still here", built.Stderr, StringComparison.Ordinal);

        // sshd (started through setpriv --pdeathsig) still answers after the pool has had time to retire its threads.
        var alice = SshTests.NewLogin(client, kiln, "alice");
        client.Ok(kiln, [.. alice.Environment, "nix", "store", "ping", "--store", "ssh-ng://kiln@127.0.0.1"]);
    }

    [Fact]
    public void Without_options_a_build_is_still_stopped_at_the_default_log_limit()
    {
        // 20.1: Kiln's limits are finite by default (Nix's are not): 256 MiB of log, 24 h, 3 h of silence.
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var flood = Dag.WriteSingle(client, workspace, "flood", "head -c 300000000 /dev/zero; mkdir $out");
        var result = client.Run(kiln, "nix-build", "--store", Kiln, flood, "--no-out-link");
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("killed after writing more than 268435456 bytes of log output", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Unpacked_inputs_go_once_the_store_collected_their_NARs()
    {
        // 20.3: DATA/unpacked kept a copy of every input ever built with, for ever. The running server's sweep now
        // removes those whose NAR the store no longer holds (here: collected by the client's GC).
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess(arguments: ["--blob-sweep-interval", "1"]);
        using var workspace = client.NewWorkspace();
        client.Ok(kiln, "nix-build", "--store", Kiln, Dag.WriteSingle(client, workspace, "unpacked", $"echo {Guid.NewGuid()}; mkdir $out"), "--no-out-link");
        var unpacked = Path.Combine(kiln.DataDirectory, "unpacked");
        string[] Entries() => Directory.GetDirectories(unpacked).SelectMany(d => Directory.GetFileSystemEntries(d)).Where(e => !Path.GetFileName(e).StartsWith('.')).ToArray();
        Assert.NotEmpty(Entries()); // busybox, the build's input

        client.Ok(kiln, "nix-store", "--store", Kiln, "--gc");
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (Entries().Length > 0 && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(200);
        }

        Assert.Empty(Entries());
        Assert.True(kiln.WaitForLog("unpacked inputs whose NARs are gone"), kiln.Log);
    }

    [Fact]
    public void A_dead_Kilns_build_groups_and_their_processes_are_swept_when_Kiln_starts()
    {
        // 20.3: a crash leaves a build's processes (its builder, slirp4netns) running in their group. Kiln names each
        // group by its PID; a group whose Kiln is gone is killed and removed at start. PID 2147483646 never exists.
        NixClient.RequireEndToEnd();
        var v2 = File.Exists("/sys/fs/cgroup/cgroup.controllers") && File.ReadAllText("/sys/fs/cgroup/cgroup.controllers").Contains("memory", StringComparison.Ordinal);
        var groups = (v2 ? new[] { "" } : ["memory", "cpuacct", "pids"]).Select(c => Path.Combine("/sys/fs/cgroup", c, "kiln", "build-2147483646-1-leftover")).ToList();
        using var leftover = System.Diagnostics.Process.Start("sleep", "600");
        try
        {
            foreach (var group in groups)
            {
                Directory.CreateDirectory(group);
                File.WriteAllText(Path.Combine(group, "cgroup.procs"), leftover.Id.ToString(System.Globalization.CultureInfo.InvariantCulture));
            }

            using var kiln = new KilnProcess();
            Assert.True(leftover.WaitForExit(10_000), "the abandoned build's process is still running");
            Assert.All(groups, group => Assert.False(Directory.Exists(group), $"{group} is still there"));
        }
        finally
        {
            if (!leftover.HasExited)
            {
                leftover.Kill();
                leftover.WaitForExit();
            }

            foreach (var group in groups.Where(Directory.Exists))
            {
                Directory.Delete(group);
            }
        }
    }

    [Fact]
    public void The_running_server_sweeps_blobs_nothing_names_and_keeps_the_rest()
    {
        // 20.3: a blob whose registration never came (an aborted upload, a refused repair) was only ever removed by the
        // offline `kiln store gc`; the running server now sweeps them (past the grace period) every interval.
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess(arguments: ["--blob-sweep-interval", "1"]);
        using var workspace = client.NewWorkspace();
        client.Ok(kiln, "nix-build", "--store", Kiln, Dag.WriteSingle(client, workspace, "kept", "echo kept > $out"), "--no-out-link");
        var blobs = Path.Combine(kiln.DataDirectory, "blobs");
        var named = Directory.GetFiles(blobs, "*.nar", SearchOption.AllDirectories);
        Assert.NotEmpty(named);

        var hash = global::Kiln.Nix.Hashing.NixHash.Compute(global::Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, Guid.NewGuid().ToString()).ToNix32();
        var orphan = Path.Combine(blobs, hash[..2], hash + ".nar");
        Directory.CreateDirectory(Path.GetDirectoryName(orphan)!);
        File.WriteAllText(orphan, "committed, never registered");
        foreach (var blob in named.Append(orphan))
        {
            File.SetLastWriteTimeUtc(blob, DateTime.UtcNow.AddHours(-1)); // all past the grace period
        }

        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (File.Exists(orphan) && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(200);
        }

        Assert.False(File.Exists(orphan), "the blob nothing names is still there");
        Assert.All(named, blob => Assert.True(File.Exists(blob), $"{blob} was named and is gone"));
    }

    [Fact]
    public void Other_local_users_can_neither_list_nor_read_the_inputs_builds_see()
    {
        // 19.8: on 2346f38 DATA/unpacked was 0755, so any local user could list and read every account's unpacked
        // (private) inputs and outputs; now it is root's and the build group's, as Nix's store is root:nixbld.
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var secret = Dag.WriteSingle(client, workspace, "secret-output", "mkdir $out; echo private to its account > $out/data");
        client.Ok(kiln, "nix-build", "--store", Kiln, secret, "--no-out-link");
        var unpacked = Path.Combine(kiln.DataDirectory, "unpacked");
        var data = Directory.EnumerateFiles(unpacked, "data", SearchOption.AllDirectories).Single();
        Assert.Equal("private to its account\n", File.ReadAllText(data));

        string[] nobody = ["--reuid", "65534", "--regid", "65534", "--clear-groups", "--"];
        foreach (var attempt in new[] { new[] { "cat", data }, ["ls", unpacked], ["ls", Path.Combine(kiln.DataDirectory, "builds")], ["ls", kiln.StoreRoot] })
        {
            var result = Nix.Tests.Support.Processes.Run("setpriv", [.. nobody, .. attempt]);
            Assert.True(result.ExitCode != 0 && result.Stderr.Contains("Permission denied", StringComparison.Ordinal), $"{string.Join(' ', attempt)}: {result.StdoutText}{result.Stderr}");
        }

        foreach (var directory in new[] { unpacked, Path.Combine(kiln.DataDirectory, "builds"), Path.Combine(kiln.DataDirectory, "sandbox-etc") })
        {
            Assert.Equal("750 0 30000", Nix.Tests.Support.Processes.Run("stat", ["-c", "%a %u %g", directory]).StdoutText.Trim());
        }
    }

    [Fact]
    public async Task A_fixed_output_whose_content_names_a_store_path_is_refused_though_its_hash_matches()
    {
        // 19.10: a fixed-output path is named by its content alone, so references would be closure nobody vouched for.
        // Later Nix refuses it with this message (Nix 2.8 returns success without registering the path, so the
        // fidelity corpus cannot hold this case). The hash is right for the content, so only the references are wrong.
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        Dag.WriteBusybox(client, workspace);
        File.WriteAllText(client.HostPath($"{workspace}/fod-refs.nix"), """
            let bb = ./bb; target = builtins.toFile "fod-ref-target" "referenced by a fixed-output path\n"; in derivation {
              name = "fod-refs";
              system = "x86_64-linux";
              builder = "${bb}/bin/sh";
              PATH = "${bb}/bin";
              args = [ "-c" "mkdir $out; printf ${target} > $out/ref" ];
              outputHashMode = "recursive";
              outputHashAlgo = "sha256";
              outputHash = "sha256-KhpYev2EUhzF/sZu+0ess0UQSqrn7hC3JaEoUwN9Quc=";
            }
            """);
        var refused = client.Run(kiln, "nix-build", "--store", Kiln, $"{workspace}/fod-refs.nix", "--no-out-link");
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Matches(@"fixed-output derivations must not reference store paths: '/nix/store/[a-z0-9]{32}-fod-refs\.drv' references 1 distinct paths, e\.g\. '/nix/store/4xyh7qv09vx5kacqgc6q9lg3vrk62f5q-fod-ref-target'", refused.Stderr);
        Assert.DoesNotContain("hash mismatch", refused.Stderr, StringComparison.Ordinal);
        Assert.Contains(await BuildRecordsAsync(kiln), b => b.DrvPath.EndsWith("-fod-refs.drv", StringComparison.Ordinal));
        Assert.Empty(Directory.GetDirectories(Path.Combine(kiln.StoreRoot, "nix", "store"), "*-fod-refs"));
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public void Nix_build_shows_the_builders_log_and_a_failing_build_shows_Nixs_error(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var ok = Dag.WriteSingle(client, workspace, "talker", "echo first line; echo second line >&2; mkdir $out");
        var logged = client.Is23
            ? client.Ok(kiln, "nix-build", "--store", Kiln, ok, "--no-out-link")
            : client.Ok(kiln, "nix", "build", "--store", Kiln, "-L", "-f", ok, "--no-link");
        var prefix = client.Is23 ? "" : "talker> ";
        Assert.Contains(prefix + "first line", logged.Stderr, StringComparison.Ordinal);
        Assert.Contains(prefix + "second line", logged.Stderr, StringComparison.Ordinal);

        var bad = Dag.WriteSingle(client, workspace, "failer", "echo about to fail; exit 3");
        var failed = client.Run(kiln, "nix-build", "--store", Kiln, bad, "--no-out-link");
        Assert.NotEqual(0, failed.ExitCode);
        Assert.Matches(@"builder for '/nix/store/[a-z0-9]{32}-failer\.drv' failed with exit code 3", failed.Stderr);
        Assert.Contains("about to fail", failed.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task Two_clients_building_overlapping_dags_at_once_build_each_shared_derivation_once(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        // Layers 0–5 are the same in both (120 derivations); layers 6–9 differ (80 each).
        var a = Dag.Write(client, workspace, "a", salt: "a", saltFrom: 6);
        var b = Dag.Write(client, workspace, "b", salt: "b", saltFrom: 6);
        var runs = new[] { a, b }.Select(dag => Task.Run(() => client.Run(kiln, "nix", "build", "--store", Kiln, "-f", dag, "--no-link"))).ToList();
        var results = await Task.WhenAll(runs);
        Assert.All(results, r => Assert.True(r.ExitCode == 0, r.Stderr));

        var builds = await BuildRecordsAsync(kiln);
        Assert.Equal(280, builds.Count);
        Assert.Equal(280, builds.Select(r => r.DrvPath).Distinct().Count());
    }
}
