using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using Kiln.EndToEnd.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// <c>/metrics</c>, <c>/healthz</c> and <c>/readyz</c> of a running <c>kiln serve</c>: a real Prometheus scrapes it
/// while stock Nix builds through it, and its query API returns the counts the builds made; the exposition passes
/// <c>promtool check metrics</c>; scrapes from elsewhere need the metrics token.
/// </summary>
public class MetricsTests
{
    private const string Socket = NixClient.SocketUri;

    private static void RequirePrometheus()
    {
        if (!Prometheus.Available || !File.Exists("/usr/bin/promtool"))
        {
            Assert.SkipWhen(Environment.GetEnvironmentVariable("KILN_REQUIRE_E2E") != "1", "Debian's prometheus package is not installed");
            Assert.Fail("Debian's prometheus package is not installed (KILN_REQUIRE_E2E=1)");
        }
    }

    [Fact]
    public async Task Prometheus_scrapes_the_counts_of_the_builds_stock_Nix_ran_and_the_exposition_passes_promtool()
    {
        RequirePrometheus();
        var client = NixClient.For("2.34.8");
        // (ASP.NET Core's switch to trust X-Forwarded-For from anyone: Kiln must not let it make a forwarded scrape local.)
        using var kiln = new KilnProcess(ssh: true, http: true, environment: new Dictionary<string, string> { ["ASPNETCORE_FORWARDEDHEADERS_ENABLED"] = "true" });
        using var workspace = client.NewWorkspace();
        using var prometheus = new Prometheus($"127.0.0.1:{kiln.HttpPort}");

        // 6 derivations built; the same again (nothing to build); one that fails.
        var dag = Dag.Write(client, workspace, "metricsdag", depth: 3, width: 2, salt: Guid.NewGuid().ToString("N"));
        client.Ok(kiln, "nix-build", "--store", Socket, dag, "--no-out-link");
        client.Ok(kiln, "nix-build", "--store", Socket, dag, "--no-out-link");
        var failing = Dag.WriteSingle(client, workspace, "metricsfail", $"echo {Guid.NewGuid():N}; exit 3");
        Assert.NotEqual(0, client.Run(kiln, "nix-build", "--store", Socket, failing, "--no-out-link").ExitCode);

        using var http = new HttpClient();
        var text = await http.GetStringAsync($"{kiln.HttpUrl}/metrics", TestContext.Current.CancellationToken);
        var check = Kiln.Nix.Tests.Support.Processes.Run("promtool", ["check", "metrics"], System.Text.Encoding.UTF8.GetBytes(text));
        Assert.True(check.ExitCode == 0, $"promtool check metrics: {check.Stderr}{check.StdoutText}");
        Assert.Contains("kiln_builds_finished_total{", text, StringComparison.Ordinal);
        Assert.DoesNotContain("/nix/store", text, StringComparison.Ordinal); // no unbounded label values
        Assert.DoesNotContain("account=", text, StringComparison.Ordinal);

        // Without a metrics token, a scrape a reverse proxy on this host forwarded is not this host's.
        using (var forwarded = new HttpRequestMessage(HttpMethod.Get, $"{kiln.HttpUrl}/metrics"))
        {
            forwarded.Headers.Add("X-Forwarded-For", "127.0.0.1");
            using var refused = await http.SendAsync(forwarded, TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.Forbidden, refused.StatusCode);
        }

        var built = await prometheus.QueryUntilAsync("sum(kiln_builds_finished_total{job=\"kiln\",outcome=\"built\"})", v => v >= 6, TimeSpan.FromSeconds(60));
        if (built != 6)
        {
            Assert.Fail($"builds finished as built: {built?.ToString(CultureInfo.InvariantCulture) ?? "none"}; target {await prometheus.TargetHealthAsync()}; {prometheus.Log}");
        }
        Assert.Equal(1, await prometheus.QueryUntilAsync("sum(kiln_builds_finished_total{outcome=\"permanentfailure\"})", v => v >= 1, TimeSpan.FromSeconds(10)));
        Assert.Equal(7, await prometheus.QueryUntilAsync("sum(kiln_builds_started_total)", v => v >= 7, TimeSpan.FromSeconds(10)));
        Assert.Equal(7, await prometheus.QueryUntilAsync("sum(kiln_build_duration_seconds_count)", v => v >= 7, TimeSpan.FromSeconds(10)));
        Assert.Equal(7, await prometheus.QueryUntilAsync("sum(kiln_queue_wait_seconds_count)", v => v >= 7, TimeSpan.FromSeconds(10)));
        // Three nix-build runs, each one worker-protocol session at least; all closed now.
        Assert.True(await prometheus.QueryUntilAsync("sum(kiln_sessions_total{protocol=\"worker\"})", v => v >= 3, TimeSpan.FromSeconds(10)) >= 3);
        Assert.Equal(0, await prometheus.QueryUntilAsync("sum(kiln_sessions_open{protocol=\"worker\"})", v => v == 0, TimeSpan.FromSeconds(10)));
        Assert.True(await prometheus.QueryUntilAsync("sum(kiln_transfer_received_bytes_total{protocol=\"worker\"})", v => v > 0, TimeSpan.FromSeconds(10)) > 0);
        // The embedded agent's slots, all free again; nothing queued.
        Assert.True(await prometheus.QueryUntilAsync("sum(kiln_agent_slots{state=\"free\"})", v => v > 0, TimeSpan.FromSeconds(10)) > 0);
        Assert.Equal(0, await prometheus.QueryUntilAsync("sum(kiln_agent_slots{state=\"busy\"})", v => v == 0, TimeSpan.FromSeconds(10)));
        Assert.Equal(0, await prometheus.QueryUntilAsync("sum(kiln_queue_jobs)", v => v == 0, TimeSpan.FromSeconds(10)));

        // A narinfo request over HTTP shows in the request histogram, by kind and status class.
        using (var narinfo = await http.GetAsync($"{kiln.HttpUrl}/{new string('0', 32)}.narinfo", TestContext.Current.CancellationToken))
        {
            Assert.Equal(HttpStatusCode.NotFound, narinfo.StatusCode);
        }

        Assert.Equal(1, await prometheus.QueryUntilAsync("sum(kiln_http_request_duration_seconds_count{kind=\"narinfo\",status=\"4xx\"})", v => v >= 1, TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public async Task Health_says_ready_with_sshd_up_and_a_forwarded_scrape_needs_the_metrics_token()
    {
        RequirePrometheus();
        var token = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(24));
        var tokenDirectory = Directory.CreateTempSubdirectory("kiln-test-metrics-").FullName;
        try
        {
            await HealthAndTokenAsync(token, Path.Combine(tokenDirectory, "token"));
        }
        finally
        {
            Directory.Delete(tokenDirectory, recursive: true);
        }
    }

    [Fact]
    public async Task An_agent_listener_on_every_address_answers_agents_only_over_IPv4_and_IPv6()
    {
        // The agents' own listener on [::] (dual-stack) takes connections to 127.0.0.1 and ::1 alike; the cache, the metrics and
        // the health answers are the cache listener's, never there (the listener was once matched by its exact address only).
        var agentPort = KilnProcess.FreePort();
        using var kiln = new KilnProcess(http: true, arguments: ["--agent-listen", $"[::]:{agentPort}"]);
        Assert.True(kiln.WaitForLog($"agents: listening on http://[::]:{agentPort}"), kiln.Log);
        using var http = new HttpClient();
        var cancel = TestContext.Current.CancellationToken;
        using (var cacheInfo = await http.GetAsync($"{kiln.HttpUrl}/nix-cache-info", cancel))
        {
            Assert.Equal(HttpStatusCode.OK, cacheInfo.StatusCode);
        }

        foreach (var host in new[] { "127.0.0.1", "[::1]" })
        {
            foreach (var path in new[] { "/nix-cache-info", "/metrics", "/readyz", "/healthz", "/api/v1/me", "/api/v1/openapi.json" })
            {
                using var response = await http.GetAsync($"http://{host}:{agentPort}{path}", cancel);
                Assert.True(response.StatusCode == HttpStatusCode.NotFound, $"{host}{path}: {response.StatusCode}");
            }
        }
    }

    private static async Task HealthAndTokenAsync(string token, string tokenFile)
    {
        File.WriteAllText(tokenFile, token + "\n");
        using var kiln = new KilnProcess(ssh: true, http: true, arguments: ["--metrics-token", tokenFile]);
        using var http = new HttpClient();
        var cancel = TestContext.Current.CancellationToken;

        Assert.Equal("ok\n", await http.GetStringAsync($"{kiln.HttpUrl}/healthz", cancel));
        using (var ready = await http.GetAsync($"{kiln.HttpUrl}/readyz", cancel))
        {
            var body = await ready.Content.ReadAsStringAsync(cancel);
            Assert.True(ready.StatusCode == HttpStatusCode.OK, body);
            Assert.Equal("database: ok\nblobs: ok\nsshd: ok\n", body);
        }

        // With a token, every scrape must show it, from this host too (a plain TCP forwarder makes anyone look local).
        foreach (var (authorization, forwardedFor, expected) in new (string?, bool, HttpStatusCode)[]
        {
            (null, false, HttpStatusCode.Forbidden), (null, true, HttpStatusCode.Forbidden), ("Bearer wrong-token-of-some-length", false, HttpStatusCode.Forbidden),
            ($"Bearer {token[..^1]}", false, HttpStatusCode.Forbidden), ($"Bearer {token}", false, HttpStatusCode.OK), ($"Bearer {token}", true, HttpStatusCode.OK),
        })
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, $"{kiln.HttpUrl}/metrics");
            if (forwardedFor)
            {
                request.Headers.Add("X-Forwarded-For", "203.0.113.7");
            }

            if (authorization is not null)
            {
                request.Headers.Authorization = AuthenticationHeaderValue.Parse(authorization);
            }

            using var response = await http.SendAsync(request, cancel);
            var body = await response.Content.ReadAsStringAsync(cancel);
            Assert.True(response.StatusCode == expected, $"{authorization ?? "no token"}: {response.StatusCode} {body}");
            Assert.DoesNotContain(token, body, StringComparison.Ordinal);
        }

        // sshd gone (killed behind Kiln's back): not ready, saying which, until Kiln has started it again.
        var sshd = File.ReadAllText(Path.Combine(kiln.DataDirectory, "ssh", "sshd.pid")).Trim();
        Assert.Equal(0, Kiln.Nix.Tests.Support.Processes.Run("kill", ["-KILL", sshd]).ExitCode);
        var notReady = false;
        for (var i = 0; i < 40 && !notReady; i++)
        {
            using var ready = await http.GetAsync($"{kiln.HttpUrl}/readyz", cancel);
            notReady = ready.StatusCode == HttpStatusCode.ServiceUnavailable && (await ready.Content.ReadAsStringAsync(cancel)).Contains("sshd: not running", StringComparison.Ordinal);
            await Task.Delay(50, cancel);
        }

        Assert.True(notReady, "readyz never said sshd was not running");
    }
}
