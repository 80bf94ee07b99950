using System.Net.Http.Headers;
using System.Text.Json;
using Kiln.EndToEnd.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The API of a running <c>kiln serve</c>, over builds stock Nix made through SSH: they are listed with their outcomes
/// for the account that asked for them (and for nobody else), and a running build's log streams as Server-Sent Events,
/// line by line, in order.
/// </summary>
public sealed class ApiTests
{
    private const string Store = "ssh-ng://kiln@127.0.0.1";

    [Fact]
    public async Task Builds_stock_Nix_ran_over_SSH_are_listed_with_their_outcomes_and_a_running_ones_log_streams_live()
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess(ssh: true, http: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        kiln.Cli("account", "create", "bob");
        var aliceToken = kiln.Cli("token", "create", "alice", "--permissions", "build:read").Split('\n')[0];
        var bobToken = kiln.Cli("token", "create", "bob", "--permissions", "build:read").Split('\n')[0];
        var salt = Guid.NewGuid().ToString("N");
        var cancel = TestContext.Current.CancellationToken;
        using var http = new HttpClient { BaseAddress = new Uri(kiln.HttpUrl) };

        // Four derivations that build and one that fails.
        client.Ok(kiln, [.. alice.Environment, "nix-build", "--store", Store, Dag.Write(client, workspace, "apidag", depth: 2, width: 2, salt: salt), "--no-out-link"]);
        var failing = client.Run(kiln, [.. alice.Environment, "nix-build", "--store", Store,
            Dag.WriteSingle(client, workspace, "api-fails", $"echo {salt}; echo it broke; exit 3"), "--no-out-link"]);
        Assert.NotEqual(0, failing.ExitCode);

        var builds = (await GetJsonAsync(http, "/api/v1/builds", aliceToken, cancel)).GetProperty("builds").EnumerateArray().ToList();
        Assert.Equal(5, builds.Count);
        var failed = Assert.Single(builds, b => b.GetProperty("status").GetString() == "failed");
        Assert.EndsWith("-api-fails.drv", failed.GetProperty("derivation").GetString(), StringComparison.Ordinal);
        Assert.Equal(4, builds.Count(b => b.GetProperty("status").GetString() == "built" && b.GetProperty("outputs").GetArrayLength() == 1));
        Assert.All(builds, b => Assert.Equal("started", b.GetProperty("relation").GetString()));
        var failedLog = await GetStringAsync(http, $"/api/v1/builds/{failed.GetProperty("id").GetInt64()}/log", aliceToken, cancel);
        Assert.Contains("it broke", failedLog, StringComparison.Ordinal);
        Assert.Empty((await GetJsonAsync(http, "/api/v1/builds", bobToken, cancel)).GetProperty("builds").EnumerateArray());

        // Kestrel holds the API to small bodies: over the limit is 413 with a token; without one, 401 before any is read.
        foreach (var (token, expected) in new[] { (aliceToken, System.Net.HttpStatusCode.RequestEntityTooLarge), (null, System.Net.HttpStatusCode.Unauthorized) })
        {
            using var large = new HttpRequestMessage(HttpMethod.Post, "/api/v1/tokens")
            {
                Content = new StringContent($$"""{"description":"{{new string('A', 1 << 20)}}"}""", System.Text.Encoding.UTF8, "application/json"),
            };
            if (token is not null)
            {
                large.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            }

            using var refused = await http.SendAsync(large, cancel);
            Assert.Equal(expected, refused.StatusCode);
        }

        // A build that prints a line every 0.3 s: its log, followed while it runs, arrives line by line, in order.
        var ticking = Dag.WriteSingle(client, workspace, "api-ticks", $"echo {salt}; for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 0.3; done; mkdir $out");
        var run = Task.Run(() => client.Run(kiln, [.. alice.Environment, "nix-build", "--store", Store, ticking, "--no-out-link"]), cancel);
        var running = await RunningBuildAsync(http, aliceToken, cancel);
        var queue = (await GetJsonAsync(http, "/api/v1/queue", aliceToken, cancel)).GetProperty("builds").EnumerateArray().ToList();
        Assert.Contains(queue, q => q.GetProperty("id").GetInt64() == running && q.GetProperty("state").GetString() is "running" or "preparing");
        Assert.Empty((await GetJsonAsync(http, "/api/v1/queue", bobToken, cancel)).GetProperty("builds").EnumerateArray());
        using var request = new HttpRequestMessage(HttpMethod.Get, $"/api/v1/builds/{running}/log?follow=1");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", aliceToken);
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var events = new StreamReader(await response.Content.ReadAsStreamAsync(cancel));
        var data = new List<string>();
        var arrivals = new List<DateTime>();
        string? end = null;
        string? eventName = null;
        while (end is null && await events.ReadLineAsync(cancel) is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal))
            {
                eventName = line[7..];
            }
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
            {
                if (eventName == "end")
                {
                    end = line[6..];
                }
                else if (line.Contains("tick", StringComparison.Ordinal))
                {
                    data.Add(line[6..]);
                    arrivals.Add(DateTime.UtcNow);
                }
            }
        }

        Assert.Equal(0, (await run).ExitCode);
        Assert.Equal("built", end);
        Assert.Equal(Enumerable.Range(1, 8).Select(i => $"tick {i}"), data);
        // Live, not all at the end: the ticks the stream carried arrived over more than a second.
        Assert.True(arrivals[^1] - arrivals[0] > TimeSpan.FromSeconds(1), $"the ticks arrived within {(arrivals[^1] - arrivals[0]).TotalMilliseconds} ms");
        // Bob cannot follow it.
        using var bobs = new HttpRequestMessage(HttpMethod.Get, $"/api/v1/builds/{running}/log?follow=1");
        bobs.Headers.Authorization = new AuthenticationHeaderValue("Bearer", bobToken);
        Assert.Equal(System.Net.HttpStatusCode.NotFound, (await http.SendAsync(bobs, cancel)).StatusCode);
    }

    [Fact]
    public async Task A_build_cancelled_through_the_API_ends_the_stock_Nix_client_waiting_for_it()
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess(ssh: true, http: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var token = kiln.Cli("token", "create", "alice", "--permissions", "build:read,build:write").Split('\n')[0];
        var cancel = TestContext.Current.CancellationToken;
        using var http = new HttpClient { BaseAddress = new Uri(kiln.HttpUrl) };
        var sleeper = Dag.WriteSingle(client, workspace, "api-sleeps", $"echo {Guid.NewGuid():N}; echo going to sleep; sleep 120; mkdir $out");
        var started = DateTime.UtcNow;
        var run = Task.Run(() => client.Run(kiln, [.. alice.Environment, "nix-build", "--store", Store, sleeper, "--no-out-link"]), cancel);
        var running = await RunningBuildAsync(http, token, cancel);
        HttpResponseMessage? response = null;
        for (var i = 0; i < 50; i++) // the client's session may be a moment behind its build's record
        {
            using var attempt = new HttpRequestMessage(HttpMethod.Post, $"/api/v1/builds/{running}/cancel");
            attempt.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            response?.Dispose();
            response = await http.SendAsync(attempt, cancel);
            if (response.StatusCode != System.Net.HttpStatusCode.Conflict)
            {
                break;
            }

            await Task.Delay(100, cancel);
        }

        using (response)
        {
            Assert.Equal(System.Net.HttpStatusCode.Accepted, response!.StatusCode);
        }

        var result = await run;
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("was cancelled through Kiln's API", result.Stderr, StringComparison.Ordinal);
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(60), "the client waited for the build to end by itself");
        var build = await GetJsonAsync(http, $"/api/v1/builds/{running}", token, cancel);
        for (var i = 0; i < 100 && build.GetProperty("status").GetString() == "running"; i++)
        {
            await Task.Delay(100, cancel);
            build = await GetJsonAsync(http, $"/api/v1/builds/{running}", token, cancel);
        }

        Assert.Equal("failed", build.GetProperty("status").GetString());
        Assert.Contains("cancelled through Kiln's API", build.GetProperty("error").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_CI_runs_tagged_builds_are_summed_up_by_kiln_ci_summary_with_log_links_that_need_no_token()
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess(ssh: true, http: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var bob = SshTests.NewLogin(client, kiln, "bob");
        var token = kiln.Cli("token", "create", "alice", "--permissions", "build:read").Split('\n')[0];
        var salt = Guid.NewGuid().ToString("N");
        var cancel = TestContext.Current.CancellationToken;

        // Bob builds a 4-derivation DAG; Alice's CI run (tagged ci-run=7 by its SSH environment) asks for the same DAG (reused),
        // one new derivation (built) and one that fails.
        var dag = Dag.Write(client, workspace, "cidag", depth: 2, width: 2, salt: salt);
        client.Ok(kiln, [.. bob.Environment, "nix-build", "--store", Store, dag, "--no-out-link"]);
        string[] tagged = [.. alice.Environment[..^1], alice.Environment[^1] + " -o SetEnv=KILN_TAG_CI_RUN=7"];
        client.Ok(kiln, [.. tagged, "nix-build", "--store", Store, dag, "--no-out-link"]);
        client.Ok(kiln, [.. tagged, "nix-build", "--store", Store, Dag.WriteSingle(client, workspace, "ci-new", $"echo {salt}; mkdir $out"), "--no-out-link"]);
        Assert.NotEqual(0, client.Run(kiln, [.. tagged, "nix-build", "--store", Store,
            Dag.WriteSingle(client, workspace, "ci-fails", $"echo {salt}; echo the test suite failed; exit 1"), "--no-out-link"]).ExitCode);
        // An untagged build of Alice's is not part of the run.
        client.Ok(kiln, [.. alice.Environment, "nix-build", "--store", Store, Dag.WriteSingle(client, workspace, "ci-other", $"echo {salt}; mkdir $out"), "--no-out-link"]);

        // The records the summary is made from: six builds for the run.
        using var http = new HttpClient { BaseAddress = new Uri(kiln.HttpUrl) };
        var records = (await GetJsonAsync(http, "/api/v1/builds?tag=ci-run=7", token, cancel)).GetProperty("builds").EnumerateArray().ToList();
        Assert.Equal(6, records.Count);
        Assert.Equal(4, records.Count(b => b.GetProperty("relation").GetString() == "shared" && b.GetProperty("status").GetString() == "built"));

        var environment = new Dictionary<string, string> { ["KILN_TOKEN"] = token };
        var markdown = global::Kiln.Nix.Tests.Support.Processes.Run("dotnet", [KilnProcess.Dll, "ci", "summary", "--server", kiln.HttpUrl, "--tag", "ci-run=7"],
            environment: environment);
        Assert.True(markdown.ExitCode == 0, markdown.Stderr);
        Assert.Contains("### Kiln builds for `ci-run=7`", markdown.StdoutText, StringComparison.Ordinal);
        Assert.Contains("| 1 | 4 | 1 | 0 |", markdown.StdoutText, StringComparison.Ordinal); // built, reused, failed, running
        Assert.Matches(@"- `ci-fails\.drv`: .*\(\[log\]\(http://127\.0\.0\.1:[0-9]+/api/v1/signed/builds/[0-9]+/log\?expires=[0-9]+&signature=[0-9a-f]{64}\) · \[build\]\(http://127\.0\.0\.1:[0-9]+/ui/builds/[0-9]+\)\)", markdown.StdoutText);
        Assert.DoesNotContain("ci-other", markdown.StdoutText, StringComparison.Ordinal);

        var json = global::Kiln.Nix.Tests.Support.Processes.Run("dotnet", [KilnProcess.Dll, "ci", "summary", "--server", kiln.HttpUrl, "--tag", "ci-run=7", "--format", "json"],
            environment: environment);
        var link = JsonDocument.Parse(json.StdoutText).RootElement.GetProperty("failures")[0].GetProperty("log").GetString()!;
        using var anonymous = new HttpClient();
        Assert.Contains("the test suite failed", await anonymous.GetStringAsync(link, cancel), StringComparison.Ordinal);
        using var tampered = await anonymous.GetAsync(link.Replace("expires=", "expires=9", StringComparison.Ordinal), cancel);
        Assert.Equal(System.Net.HttpStatusCode.Forbidden, tampered.StatusCode);

        // The same summary from the SSH shell (without links: the shell knows no HTTP address), and the tag's builds listed.
        var shell = SshTests.Shell(kiln, alice, null, "kiln", "ci", "summary", "--tag", "ci-run=7");
        Assert.True(shell.ExitCode == 0, shell.Stderr);
        Assert.Contains("| 1 | 4 | 1 | 0 |", shell.StdoutText, StringComparison.Ordinal);
        using (var listed = JsonDocument.Parse(SshTests.Shell(kiln, alice, null, "kiln", "builds", "list", "--tag", "ci-run=7", "--json").StdoutText))
        {
            Assert.Equal(6, listed.RootElement.GetArrayLength());
        }

        var refused = global::Kiln.Nix.Tests.Support.Processes.Run("dotnet", [KilnProcess.Dll, "ci", "summary", "--server", kiln.HttpUrl, "--tag", "ci-run=7"],
            environment: new Dictionary<string, string> { ["KILN_TOKEN"] = "kiln_" + new string('0', 48) });
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("401", refused.Stderr, StringComparison.Ordinal);
    }

    // The id of the account's first build the API lists as running, once there is one (30 s at most).
    private static async Task<long> RunningBuildAsync(HttpClient http, string token, CancellationToken cancellationToken)
    {
        for (var i = 0; i < 300; i++)
        {
            if ((await GetJsonAsync(http, "/api/v1/builds?status=running", token, cancellationToken)).GetProperty("builds").EnumerateArray().FirstOrDefault() is
                { ValueKind: JsonValueKind.Object } build)
            {
                return build.GetProperty("id").GetInt64();
            }

            await Task.Delay(100, cancellationToken);
        }

        throw new InvalidOperationException("no build of the account started running within 30 s");
    }

    internal static async Task<string> GetStringAsync(HttpClient http, string path, string token, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, path);
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var response = await http.SendAsync(request, cancellationToken);
        var body = await response.Content.ReadAsStringAsync(cancellationToken);
        Assert.True(response.IsSuccessStatusCode, $"{path}: {response.StatusCode} {body}");
        return body;
    }

    internal static async Task<JsonElement> GetJsonAsync(HttpClient http, string path, string token, CancellationToken cancellationToken) =>
        JsonDocument.Parse(await GetStringAsync(http, path, token, cancellationToken)).RootElement;
}
