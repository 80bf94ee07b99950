using System.Text.Json;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The farm with real parts: <c>kiln serve --local-slots 0</c> (a pure coordinator) and <c>kiln agent</c> processes
/// with their own data directories dialled in over HTTP; stock Nix clients build through the socket as ever. Builds
/// spread over the agents and come out as a local build's; an agent killed or frozen mid-build costs the client
/// nothing but a log line; placement follows systems and features.
/// </summary>
public class FarmTests(ITestOutputHelper output)
{
    private const string Kiln = NixClient.SocketUri;

    private static async Task<IReadOnlyList<BuildRecord>> BuildRecordsAsync(KilnProcess kiln)
    {
        await using var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db"));
        return await metadata.ListBuildsAsync(null, 100_000, CancellationToken.None);
    }

    private static KilnProcess Coordinator(params string[] arguments) =>
        new(http: true, arguments: ["--local-slots", "0", "--agent-timeout", "5", .. arguments]);

    private static KilnProcess Coordinator(bool ssh) =>
        new(ssh: ssh, http: true, arguments: ["--local-slots", "0", "--agent-timeout", "5"]);

    private static string Token(KilnProcess kiln, string name) => kiln.Cli("agent-token", "create", name).Trim();

    // Polls until the condition holds; false when it did not within the timeout.
    private static async Task<bool> EventuallyAsync(Func<bool> condition, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                return false;
            }

            await Task.Delay(50);
        }

        return true;
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task A_200_derivation_dag_spreads_over_the_agents_and_matches_a_local_build(string version)
    {
        var client = NixClient.For(version);
        using var workspace = client.NewWorkspace();
        var dag = Dag.Write(client, workspace, "farmdag");
        Dictionary<string, string> farmOutputs;
        using (var kiln = Coordinator())
        {
            var token = Token(kiln, "farm");
            using var one = new AgentProcess(kiln, token, "one", slots: 4);
            using var two = new AgentProcess(kiln, token, "two", slots: 4);
            var watch = System.Diagnostics.Stopwatch.StartNew();
            client.Ok(kiln, "nix-build", "--store", Kiln, dag, "--no-out-link");
            output.WriteLine($"Nix {version}: 200 derivations on 2 agents x 4 slots in {watch.Elapsed.TotalSeconds:F1} s");

            var builds = await BuildRecordsAsync(kiln);
            Assert.Equal(200, builds.Count);
            Assert.All(builds, b => Assert.True(b.Succeeded, b.Error));
            var perAgent = builds.GroupBy(b => b.Agent).ToDictionary(g => g.Key, g => g.Count());
            output.WriteLine(string.Join(", ", perAgent.Select(p => $"{p.Key}: {p.Value}")));
            Assert.Equal(["one", "two"], perAgent.Keys.Order(StringComparer.Ordinal));
            Assert.All(perAgent.Values, count => Assert.True(count >= 10, $"builds per agent: {string.Join(", ", perAgent)}"));
            farmOutputs = Outputs(builds);

            // The operator sees both agents, connected, under the token they used.
            using var listed = JsonDocument.Parse(kiln.Cli("agents", "list", "--json"));
            var agents = listed.RootElement.EnumerateArray().ToList();
            Assert.Equal(["one", "two"], agents.Select(a => a.GetProperty("name").GetString()));
            Assert.All(agents, a => Assert.True(a.GetProperty("connected").GetBoolean() && a.GetProperty("token").GetString() == "farm"));

            // Building again builds nothing.
            client.Ok(kiln, "nix-build", "--store", Kiln, dag, "--no-out-link");
            Assert.Equal(200, (await BuildRecordsAsync(kiln)).Count);
        }

        // The same DAG built by the embedded agent alone: the same outputs, byte for byte (NAR hashes).
        using (var local = new KilnProcess())
        {
            client.Ok(local, "nix-build", "--store", Kiln, dag, "--no-out-link");
            Assert.Equal(Outputs(await BuildRecordsAsync(local)), farmOutputs);
        }
    }

    private static Dictionary<string, string> Outputs(IEnumerable<BuildRecord> builds) =>
        builds.SelectMany(b => b.Outputs).ToDictionary(o => o.Path.FullPath, o => o.NarHash.ToString());

    [Theory]
    [InlineData("KILL")]
    [InlineData("STOP")]
    public async Task An_agent_lost_mid_build_costs_the_client_nothing_and_its_late_result_is_not_registered_twice(string signal)
    {
        var client = NixClient.For("2.34.8");
        using var kiln = Coordinator();
        var token = Token(kiln, "farm");
        using var one = new AgentProcess(kiln, token, "one", slots: 1);
        using var two = new AgentProcess(kiln, token, "two", slots: 1);
        using var workspace = client.NewWorkspace();
        var marker = Guid.NewGuid().ToString("N");
        var slow = Dag.WriteSingle(client, workspace, "slow", $"echo starting {marker}; sleep 8; mkdir $out; echo {marker} > $out/done");
        using var build = client.Start(kiln, "nix-build", "--store", Kiln, slow, "--no-out-link");
        var stderr = build.StandardError.ReadToEndAsync();
        var stdout = build.StandardOutput.ReadToEndAsync();

        // Whichever agent took it is lost: killed, or frozen as a machine that hangs or loses its network.
        AgentProcess? Taker() => new[] { one, two }.FirstOrDefault(a => a.Log.Contains("slow.drv", StringComparison.Ordinal));
        Assert.True(await EventuallyAsync(() => Taker() is not null, TimeSpan.FromSeconds(60)), kiln.Log);
        var first = Taker()!;
        var second = first == one ? two : one;
        first.Signal(signal);
        Assert.True(await build.WaitForExitAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(120)).ContinueWith(t => t.IsCompletedSuccessfully),
            "the client's build did not end");
        Assert.True(build.ExitCode == 0, await stderr + "\n" + kiln.Log);
        Assert.Contains("again on another agent", await stderr, StringComparison.Ordinal);
        Assert.Contains($"agent {first.Name} lost", kiln.Log, StringComparison.Ordinal);
        var outPath = (await stdout).Trim();
        Assert.Equal(marker + "\n", File.ReadAllText(Path.Combine(kiln.StoreRoot, outPath.TrimStart('/'), "done")));

        if (signal == "STOP")
        {
            // Back from the dead: it learns its session is gone, stops the build or reports it late; either way
            // nothing is registered again.
            first.Signal("CONT");
            Assert.True(await EventuallyAsync(() => first.Log.Split("connected to").Length >= 3, TimeSpan.FromSeconds(60)), first.Log);
        }

        var builds = (await BuildRecordsAsync(kiln)).Where(b => b.DrvPath.Contains("slow", StringComparison.Ordinal)).ToList();
        var record = Assert.Single(builds);
        Assert.True(record.Succeeded, record.Error);
        Assert.Equal(second.Name, record.Agent);
        Assert.Equal(2, record.Attempts); // what the API and the dashboard show as one retry

        // The server kept serving: another build runs on the agent left.
        var after = Dag.WriteSingle(client, workspace, "after", $"echo {marker}; mkdir $out");
        client.Ok(kiln, "nix-build", "--store", Kiln, after, "--no-out-link");
    }

    [Fact]
    public async Task Steps_go_only_to_an_agent_with_their_system_and_features_and_a_system_nobody_has_waits_then_fails()
    {
        var client = NixClient.For("2.26.3");
        using var kiln = Coordinator("--agent-wait", "3");
        var token = Token(kiln, "farm");
        using var plain = new AgentProcess(kiln, token, "plain", slots: 2);
        using var special = new AgentProcess(kiln, token, "special", slots: 1, ["--features", "bench-feature"]);
        using var workspace = client.NewWorkspace();
        Dag.WriteBusybox(client, workspace);
        var marker = Guid.NewGuid().ToString("N");
        File.WriteAllText(client.HostPath($"{workspace}/placed.nix"), $$"""
            let bb = ./bb; mk = i: derivation {
              name = "placed-${toString i}"; system = "x86_64-linux"; builder = "${bb}/bin/sh"; PATH = "${bb}/bin";
              requiredSystemFeatures = [ "bench-feature" ];
              args = [ "-c" "echo {{marker}} ${toString i}; mkdir $out" ];
            }; in map mk [ 1 2 3 4 ]
            """);
        client.Ok(kiln, "nix-build", "--store", Kiln, $"{workspace}/placed.nix", "--no-out-link");
        var placed = (await BuildRecordsAsync(kiln)).Where(b => b.DrvPath.Contains("placed", StringComparison.Ordinal)).ToList();
        Assert.Equal(4, placed.Count);
        Assert.All(placed, b => Assert.Equal("special", b.Agent));

        File.WriteAllText(client.HostPath($"{workspace}/arm.nix"), $$"""
            derivation { name = "arm-{{marker}}"; system = "aarch64-linux"; builder = "/bin/sh"; args = [ "-c" "mkdir $out" ]; }
            """);
        var arm = client.Run(kiln, "nix-build", "--store", Kiln, $"{workspace}/arm.nix", "--no-out-link");
        Assert.NotEqual(0, arm.ExitCode);
        Assert.Contains("waiting for an agent with system aarch64-linux", arm.Stderr, StringComparison.Ordinal);
        Assert.Contains("a 'aarch64-linux' is required to build", arm.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task One_accounts_500_derivations_do_not_stall_another_accounts_single_build()
    {
        var client = NixClient.For("2.34.8");
        using var kiln = Coordinator(ssh: true);
        var token = Token(kiln, "farm");
        using var agent = new AgentProcess(kiln, token, "only", slots: 2);
        using var workspace = client.NewWorkspace();
        Dag.WriteBusybox(client, workspace);
        var marker = Guid.NewGuid().ToString("N");
        File.WriteAllText(client.HostPath($"{workspace}/many.nix"), $$"""
            let bb = ./bb; mk = i: derivation {
              name = "many-${toString i}"; system = "x86_64-linux"; builder = "${bb}/bin/sh"; PATH = "${bb}/bin";
              args = [ "-c" "echo {{marker}} ${toString i}; sleep 3; mkdir $out" ];
            }; in builtins.genList mk 500
            """);

        // Account "local" (the socket) asks for 500 builds of 3 s each: 750 s of work for the agent's two slots.
        using var many = client.Start(kiln, "nix-build", "--store", Kiln, $"{workspace}/many.nix", "--no-out-link");
        Assert.True(await EventuallyAsync(() => agent.Log.Split("many-").Length >= 4, TimeSpan.FromSeconds(120)), agent.Log + kiln.Log);

        // Then alice asks for one over SSH: hers is next for a free slot, not the 501st.
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var single = Dag.WriteSingle(client, workspace, "alices", $"echo {marker}; mkdir $out");
        var watch = System.Diagnostics.Stopwatch.StartNew();
        client.Ok(kiln, [.. alice.Environment, "nix", "build", "--eval-store", "auto", "--store", "ssh-ng://kiln@127.0.0.1", "-f", single, "--no-link"]);
        output.WriteLine($"alice's build took {watch.Elapsed.TotalSeconds:F1} s while 500 others waited");
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(60), $"alice waited {watch.Elapsed}");
        var builds = await BuildRecordsAsync(kiln);
        var hers = Assert.Single(builds, b => b.DrvPath.Contains("alices", StringComparison.Ordinal));
        Assert.True(hers.Succeeded, hers.Error);

        // (Every one of the 500 is recorded from the moment it is offered; few have run by now.)
        var done = builds.Count(b => b.DrvPath.Contains("many-", StringComparison.Ordinal) && !b.Running);
        Assert.True(done < 20, $"{done} of the 500 ran before alice's");
        many.Kill(entireProcessTree: true);
    }

    [Fact]
    public async Task A_build_that_runs_out_of_its_memory_grant_gets_twice_it_history_sizes_the_next_and_the_maximum_holds()
    {
        var client = NixClient.For("2.34.8");
        using var kiln = Coordinator("--build-memory", "1GiB", "--min-mem", "64MiB", "--default-mem", "64MiB");
        using var agent = new AgentProcess(kiln, Token(kiln, "farm"), "only", slots: 1);
        using var workspace = client.NewWorkspace();
        var salt = Guid.NewGuid().ToString("N");

        // busybox awk doubles a string to 2^(4+n) bytes (and holds the old one while making the new).
        string Hog(string name, int doublings) => Dag.WriteSingle(client, workspace, name,
            $"echo {salt}; ${{bb}}/bin/busybox awk 'BEGIN {{ s = \"0123456789abcdef\"; for (i = 0; i < {doublings}; i++) s = s s; print length(s) }}' && mkdir $out");

        // 64 MiB of string: more than the default grant for a package never built.
        var first = client.Ok(kiln, "nix-build", "--store", Kiln, Hog("hog-1", 22), "--no-out-link");
        output.WriteLine(first.Stderr);
        Assert.Contains("ran out of its 64 MiB of memory; building it again with 128 MiB", first.Stderr, StringComparison.Ordinal);
        // Each run its grant killed is an attempt (64 MiB of string may need 256 MiB while the old one is held).
        Assert.Equal(first.Stderr.Split("ran out of its").Length, (await BuildRecordsAsync(kiln)).Single(b => b.DrvPath.EndsWith("hog-1.drv", StringComparison.Ordinal)).Attempts);

        // The same package again (another version): history gives it enough at once.
        var second = client.Ok(kiln, "nix-build", "--store", Kiln, Hog("hog-2", 22), "--no-out-link");
        Assert.DoesNotContain("ran out of", second.Stderr, StringComparison.Ordinal);

        // 2 GiB: past the maximum, however often it is doubled.
        var big = client.Run(kiln, "nix-build", "--store", Kiln, Hog("bighog-1", 27), "--no-out-link");
        output.WriteLine(big.Stderr);
        Assert.NotEqual(0, big.ExitCode);
        Assert.Contains("building it again with 1024 MiB", big.Stderr, StringComparison.Ordinal);
        Assert.Contains("for going over its memory limit of 1024 MiB", big.Stderr, StringComparison.Ordinal);
        Assert.Contains("1024 MiB is the most memory Kiln gives one build", big.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Agents_reach_the_server_through_an_nginx_reverse_proxy_and_over_TLS_on_their_own_listener()
    {
        var client = NixClient.For("2.8.0");
        using var certificates = new global::Kiln.Nix.Tests.Support.TempDir();
        var (certificate, key) = (certificates["cert.pem"], certificates["key.pem"]);
        var openssl = global::Kiln.Nix.Tests.Support.Processes.Run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", certificate, "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]);
        Assert.True(openssl.ExitCode == 0, openssl.Stderr);
        var agentPort = KilnProcess.FreePort();
        using var kiln = Coordinator("--agent-listen", $"127.0.0.1:{agentPort}", "--agent-tls-cert", certificate, "--agent-tls-key", key);
        Assert.True(kiln.WaitForLog($"agents: listening on https://127.0.0.1:{agentPort}"), kiln.Log);
        var token = Token(kiln, "farm");
        // nginx in front of the agents' TLS listener, as an operator might put one (plain HTTP to nginx here).
        using var proxy = new Nginx(certificates.Path, proxyTo: $"https://127.0.0.1:{agentPort}");
        using var proxied = new AgentProcess(kiln, token, "proxied", slots: 2, server: $"http://127.0.0.1:{proxy.Port}");
        using var tls = new AgentProcess(kiln, token, "tls", slots: 2, ["--ca-cert", certificate], server: $"https://127.0.0.1:{agentPort}");

        using var workspace = client.NewWorkspace();
        var dag = Dag.Write(client, workspace, "proxydag", depth: 4, width: 6, salt: Guid.NewGuid().ToString("N"));
        client.Ok(kiln, "nix-build", "--store", Kiln, dag, "--no-out-link");
        var builds = await BuildRecordsAsync(kiln);
        Assert.Equal(24, builds.Count);
        Assert.All(builds, b => Assert.True(b.Succeeded, b.Error));
        Assert.Equal(["proxied", "tls"], builds.Select(b => b.Agent).Distinct().Order(StringComparer.Ordinal));

        // The agents' listener is theirs alone: the binary cache is not there, and a certificate it does not trust is refused.
        using var http = new HttpClient(new HttpClientHandler { ServerCertificateCustomValidationCallback = (_, _, _, _) => true });
        Assert.Equal(System.Net.HttpStatusCode.NotFound, (await http.GetAsync(new Uri($"https://127.0.0.1:{agentPort}/nix-cache-info"))).StatusCode);
        using var untrusting = new AgentProcess(kiln, token, "untrusting", wait: false, server: $"https://127.0.0.1:{agentPort}");
        Assert.True(untrusting.WaitForLog("cannot be reached", TimeSpan.FromSeconds(30)), untrusting.Log);
        Assert.DoesNotContain("agent untrusting connected", kiln.Log, StringComparison.Ordinal);

        // With a listener of their own, agents are not answered on the cache's plain listener (their token would travel in clear).
        using var astray = new AgentProcess(kiln, token, "astray", wait: false);
        Assert.True(astray.WaitForExit(TimeSpan.FromSeconds(30)), astray.Log);
        Assert.Contains("no Kiln agent listener", astray.Log, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("2.8.0")]
    [InlineData("2.34.8")]
    public async Task Remote_store_and_remote_builder_clients_over_ssh_ng_and_ssh_build_on_agents(string version)
    {
        var client = NixClient.For(version);
        using var kiln = Coordinator(ssh: true);
        using var agent = new AgentProcess(kiln, Token(kiln, "farm"), "only", slots: 4);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var salt = Guid.NewGuid().ToString("N");

        // A remote store over ssh-ng://, then a remote builder over ssh:// (the serve protocol) and over ssh-ng://.
        client.Ok(kiln, [.. alice.Environment, "nix", "build", "--eval-store", "auto", "--store", "ssh-ng://kiln@127.0.0.1",
            "-f", Dag.Write(client, workspace, "storedag", depth: 2, width: 3, salt: salt), "--no-link"]);
        foreach (var scheme in new[] { "ssh", "ssh-ng" })
        {
            client.Ok(kiln, [.. alice.Environment, "nix", "build", "--store", $"local?root={workspace}/client-{scheme}",
                "--builders", $"{scheme}://kiln@127.0.0.1 x86_64-linux {alice.KeyFile} 8 1", "--max-jobs", "0",
                "-f", Dag.Write(client, workspace, $"{scheme}dag", depth: 2, width: 3, salt: salt + scheme), "--no-link"]);
        }

        var builds = await BuildRecordsAsync(kiln);
        Assert.Equal(18, builds.Count);
        Assert.All(builds, b => Assert.True(b.Succeeded && b.Agent == "only", $"{b.DrvPath}: {b.Agent} {b.Error}"));
    }

    [Fact]
    public void An_agent_with_a_wrong_or_revoked_token_is_refused_and_says_so()
    {
        using var kiln = Coordinator();
        var token = Token(kiln, "doomed");
        using (var wrong = new AgentProcess(kiln, "kiln-agent_" + new string('0', 48), "wrong", wait: false))
        {
            Assert.True(wrong.WaitForExit(TimeSpan.FromSeconds(60)), wrong.Log);
            Assert.Equal(1, wrong.ExitCode);
            Assert.Contains("refused the agent token", wrong.Log, StringComparison.Ordinal);
        }

        kiln.Cli("agent-token", "revoke", "doomed");
        using var revoked = new AgentProcess(kiln, token, "revoked", wait: false);
        Assert.True(revoked.WaitForExit(TimeSpan.FromSeconds(60)), revoked.Log);
        Assert.Contains("refused the agent token", revoked.Log, StringComparison.Ordinal);
        Assert.DoesNotContain(token, kiln.Log, StringComparison.Ordinal);
    }
}
