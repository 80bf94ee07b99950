using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Metadata;

[assembly: AssemblyFixture(typeof(S3Server))]

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Two <c>kiln serve</c> front doors, each with its own data directory, on one PostgreSQL database and one S3 bucket
/// (s3rver): an account, key and token made through one work through the other; a closure pushed through A over HTTP
/// is pulled through B byte for byte; what A built over <c>ssh-ng://</c> is valid through B and copies from it; the
/// NARs are in the bucket, not in either data directory; both show the same SSH host key and sign with the same build key.
/// </summary>
public sealed class FrontDoorTests(PostgresServer postgres, S3Server s3)
{
    // Two front doors, A and B, each with a data directory of its own, on a fresh database and a fresh bucket.
    private (string Database, string Bucket, KilnProcess A, KilnProcess B) TwoFrontDoors(bool http, params string[] more)
    {
        postgres.Require();
        s3.Require();
        var database = postgres.CreateDatabase();
        var bucket = s3.NewLocation();
        string[] shared = ["--database", database, "--blobs", bucket, .. more];
        var a = new KilnProcess(ssh: true, http: http, arguments: shared);
        try
        {
            return (database, bucket, a, new KilnProcess(ssh: true, http: http, arguments: shared));
        }
        catch
        {
            a.Dispose();
            throw;
        }
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task Two_front_doors_on_one_database_and_one_bucket_serve_the_same_store(string version)
    {
        var client = NixClient.For(version);
        var (database, bucket, a, b) = TwoFrontDoors(http: true, "--blob-cache-size", "64MiB");
        using var doorA = a;
        using var doorB = b;
        using var workspace = client.NewWorkspace();

        // One service: the same SSH host key (clients pin one key, StrictHostKeyChecking passes on both) and build key.
        Assert.Equal(a.KnownHostsLine.Split(' ', 2)[1], b.KnownHostsLine.Split(' ', 2)[1]);
        Assert.Equal(File.ReadAllText(Path.Combine(a.DataDirectory, "keys", "build.public")), File.ReadAllText(Path.Combine(b.DataDirectory, "keys", "build.public")));

        // Account, key and token made through A's data directory; used through B.
        var alice = SshTests.NewLogin(client, a, "alice");
        var (token, netrc) = CacheAccess.Netrc(client, a, workspace, "alice");

        // Push through A over HTTP, pull through B over HTTP: the same bytes.
        var (source, top) = CacheAccess.SmallClosure(client, a, workspace);
        client.Ok(a, ["nix", "copy", "--store", source, "--to", a.HttpUrl, .. netrc, top]);
        client.Ok(b, ["nix", "copy", "--from", b.HttpUrl, "--to", $"local?root={workspace}/pulled", "--no-check-sigs", .. netrc, top]);
        Assert.Equal(File.ReadAllBytes(client.HostPath($"{workspace}/source{top}")), File.ReadAllBytes(client.HostPath($"{workspace}/pulled{top}")));

        // The compressed files Nix uploaded through A (its narinfo cache names them, and behind a load balancer it asks
        // whichever front door it reaches) are served by B too, byte for byte.
        await using (var shared = MetadataStores.Open(database))
        {
            var narFiles = MetadataTables.All.Single(t => t.Name == "nar_files");
            var kept = new List<string>();
            await foreach (var row in shared.ReadTableAsync(narFiles, CancellationToken.None))
            {
                kept.Add((string)row[0]!);
            }

            Assert.NotEmpty(kept);
            using var http = new HttpClient();
            foreach (var file in kept)
            {
                using var request = new HttpRequestMessage(HttpMethod.Get, $"{b.HttpUrl}/nar/{file}");
                request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Basic", Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes($"alice:{token}")));
                using var response = await http.SendAsync(request);
                Assert.True(response.IsSuccessStatusCode, $"{file}: {response.StatusCode}");
                var bytes = await response.Content.ReadAsByteArrayAsync();
                Assert.StartsWith(Kiln.Nix.Hashing.NixHash.Compute(Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, bytes).ToNix32() + ".", file, StringComparison.Ordinal);
            }
        }

        // Build through A over ssh-ng; B (its own host key pinned) sees the outputs and serves their NARs.
        var dag = Dag.Write(client, workspace, "doordag", depth: 2, width: 3, salt: Guid.NewGuid().ToString("N"));
        string[] evalStore = client.Is23 ? [] : ["--eval-store", "auto"];
        client.Ok(a, [.. alice.Environment, "nix", "build", .. evalStore, "--store", "ssh-ng://kiln@127.0.0.1", "-f", dag, "--no-link"]);
        var throughB = SshTests.SshEnvironment(client, b, alice.KeyFile);
        var outputs = client.Ok(b, [.. throughB, "nix", "path-info", .. evalStore, "--store", "ssh-ng://kiln@127.0.0.1", "-f", dag]).StdoutText
            .Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, outputs.Length); // the last layer's three derivations
        client.Ok(b, [.. throughB, "nix", "copy", "--no-check-sigs", "--from", "ssh-ng://kiln@127.0.0.1", "--to", $"local?root={workspace}/built", .. outputs]);
        Assert.Equal(6, client.Ok(b, ["nix", "path-info", "--store", $"local?root={workspace}/built", "-r", .. outputs]).StdoutText
            .Split('\n').Count(p => p.Contains("-dag-", StringComparison.Ordinal)));

        // Every build ran once, recorded in the one database; the NARs are in the bucket and in no data directory's blobs/.
        await using var metadata = MetadataStores.Open(database);
        var account = (await metadata.FindAccountAsync("alice", CancellationToken.None))!;
        Assert.Equal(6, (await metadata.ListBuildsAsync(account.Id, 100, CancellationToken.None)).Count);
        var pushed = (await metadata.GetPathsAsync(account.Id, [StorePath.Parse(top)], CancellationToken.None)).Values.Single();
        Assert.Contains(s3.ObjectFiles(bucket), f => f.Contains(pushed.Info.NarHash.ToNix32(), StringComparison.Ordinal));
        foreach (var door in new[] { a, b })
        {
            Assert.Empty(Directory.EnumerateFiles(Path.Combine(door.DataDirectory, "blobs"), "*.nar", SearchOption.AllDirectories));
        }
    }

    // Logs across front doors: a client of B waiting for the build A runs gets its log at the end (live on A), and B's
    // SSH shell and HTTP cache show it afterwards, from the bucket the front doors share.
    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task The_log_of_a_build_one_front_door_ran_is_shown_through_the_other(string version)
    {
        var client = NixClient.For(version);
        var (database, _, a, b) = TwoFrontDoors(http: true);
        using var doorA = a;
        using var doorB = b;
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, a, "alice");
        var throughB = SshTests.SshEnvironment(client, b, alice.KeyFile);
        var (_, netrc) = CacheAccess.Netrc(client, a, workspace, "alice", "store:read");

        var marker = Guid.NewGuid().ToString("N");
        // Long enough that B's client, started once A's build runs, joins it rather than reusing its record (B's SSH
        // session and evaluation take seconds on a loaded machine: 3 s was once too short, and in CI 8 s once was).
        var drv = Dag.WriteSingle(client, workspace, "slowlog", $"echo said-{marker}; sleep 20; echo done > $out");
        string[] evalStore = client.Is23 ? [] : ["--eval-store", "auto"];
        string[] build = ["nix", "build", .. (client.Is23 ? Array.Empty<string>() : ["-L"]), .. evalStore, "--store", "ssh-ng://kiln@127.0.0.1", "-f", drv, "--no-link"];
        await using var metadata = MetadataStores.Open(database);
        using var first = client.Start(a, [.. alice.Environment, .. build]);
        var firstErr = first.StandardError.ReadToEndAsync();
        var started = DateTime.UtcNow;
        while ((await metadata.ListBuildsAsync(null, 10, CancellationToken.None)).Count == 0)
        {
            Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(60), "the build never started on A" + a.Log);
            await Task.Delay(100);
        }

        using var second = client.Start(b, [.. throughB, .. build]);
        var secondErr = await second.StandardError.ReadToEndAsync();
        await Task.WhenAll(first.WaitForExitAsync(), second.WaitForExitAsync());
        Assert.True(first.ExitCode == 0, await firstErr + a.Log);
        Assert.True(second.ExitCode == 0, secondErr + b.Log);
        var record = Assert.Single(await metadata.ListBuildsAsync(null, 10, CancellationToken.None)); // built once, on A
        if (!client.Is23)
        {
            Assert.Contains("another Kiln front door is building", secondErr, StringComparison.Ordinal);
            Assert.Contains($"said-{marker}", secondErr, StringComparison.Ordinal);
        }

        var id = record.Id.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var shell = SshTests.Shell(b, alice, null, "kiln", "builds", "log", id);
        Assert.True(shell.ExitCode == 0, shell.Stderr);
        Assert.Contains($"said-{marker}", shell.StdoutText, StringComparison.Ordinal);
        var log = client.Ok(b, ["nix", "log", "--store", b.HttpUrl, .. netrc, $"/nix/store/{record.DrvPath}"]);
        Assert.Contains($"said-{marker}", log.StdoutText, StringComparison.Ordinal);
    }

    // One scheduler across front doors: the step's claim is in the database, so a DAG asked for through A and B at
    // once is built once, derivation by derivation, whichever front door got there first.
    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task A_dag_built_through_two_front_doors_at_once_is_built_once(string version)
    {
        var client = NixClient.For(version);
        var (database, _, a, b) = TwoFrontDoors(http: false);
        using var doorA = a;
        using var doorB = b;
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, a, "alice");
        var throughA = alice.Environment;
        var throughB = SshTests.SshEnvironment(client, b, alice.KeyFile);

        var dag = Dag.Write(client, workspace, "oncedag", depth: 10, width: 20, salt: Guid.NewGuid().ToString("N")); // the bench's 200
        string[] evalStore = client.Is23 ? [] : ["--eval-store", "auto"];
        string[] build = ["nix", "build", .. evalStore, "--store", "ssh-ng://kiln@127.0.0.1", "-f", dag, "--no-link"];
        using var first = client.Start(a, [.. throughA, .. build]);
        using var second = client.Start(b, [.. throughB, .. build]);
        var outputs = await Task.WhenAll(first.StandardError.ReadToEndAsync(), second.StandardError.ReadToEndAsync());
        await Task.WhenAll(first.WaitForExitAsync(), second.WaitForExitAsync());
        Assert.True(first.ExitCode == 0, outputs[0] + a.Log + b.Log);
        Assert.True(second.ExitCode == 0, outputs[1] + a.Log + b.Log);

        await using var metadata = MetadataStores.Open(database);
        var builds = await metadata.ListBuildsAsync(null, 1000, CancellationToken.None);
        Assert.All(builds, r => Assert.True(r.Succeeded, r.Error));
        Assert.Equal(200, builds.Count);
        Assert.Equal(200, builds.Select(r => r.DrvPath).Distinct().Count());
    }

    // max-jobs across front doors: an account allowed one build at a time runs one at a time, whichever front doors its
    // builds came through (the slot is claimed in the database); the one that waits says why, and the queue listing of
    // its front door shows it (without a record: it has none yet) to its account only. Each build writes the machine's
    // uptime as it starts and ends, so the test sees when each ran.
    [Fact]
    public async Task An_accounts_max_jobs_holds_across_front_doors()
    {
        var client = NixClient.For("2.8.0");
        var (database, a, b, alice, throughB, aliceToken, bobToken) = AliceAtOneJob(client, "build:read");
        using var doorA = a;
        using var doorB = b;
        using var workspace = client.NewWorkspace();
        var cancel = TestContext.Current.CancellationToken;
        using var httpA = new HttpClient { BaseAddress = new Uri(a.HttpUrl) };
        using var httpB = new HttpClient { BaseAddress = new Uri(b.HttpUrl) };

        var salt = Guid.NewGuid().ToString("N");
        using var first = client.Start(a, [.. alice.Environment, .. TimedBuild(client, workspace, salt, "one", 6)]);
        using var second = client.Start(b, [.. throughB, .. TimedBuild(client, workspace, salt, "two", 6)]);
        var logsRead = Task.WhenAll(first.StandardError.ReadToEndAsync(cancel), second.StandardError.ReadToEndAsync(cancel));

        // Whichever request got the slot, the other's front door lists it as waiting for the account's limit.
        System.Text.Json.JsonElement? waiting = null;
        for (var until = DateTime.UtcNow.AddSeconds(90); waiting is null && DateTime.UtcNow < until && !logsRead.IsCompleted;)
        {
            foreach (var http in new[] { httpA, httpB })
            {
                var builds = (await ApiTests.GetJsonAsync(http, "/api/v1/queue", aliceToken, cancel)).GetProperty("builds").EnumerateArray();
                waiting ??= builds.Cast<System.Text.Json.JsonElement?>().FirstOrDefault(q => q!.Value.GetProperty("state").GetString() == "account-limit");
                Assert.Empty((await ApiTests.GetJsonAsync(http, "/api/v1/queue", bobToken, cancel)).GetProperty("builds").EnumerateArray());
            }

            await Task.Delay(100, cancel);
        }

        Assert.True(waiting is not null, "no front door listed the build waiting for Alice's limit");
        Assert.Equal(System.Text.Json.JsonValueKind.Null, waiting.Value.GetProperty("id").ValueKind);
        Assert.Matches("^/nix/store/[a-z0-9]{32}-(one|two)\\.drv$", waiting.Value.GetProperty("derivation").GetString());
        var logs = await logsRead;
        await Task.WhenAll(first.WaitForExitAsync(), second.WaitForExitAsync());
        Assert.True(first.ExitCode == 0, logs[0] + a.Log);
        Assert.True(second.ExitCode == 0, logs[1] + b.Log);
        var waitedFor = waiting.Value.GetProperty("derivation").GetString()!;
        Assert.Contains(logs, l => l.Contains($"kiln: waiting for a build slot for '{waitedFor}'", StringComparison.Ordinal));
        foreach (var http in new[] { httpA, httpB })
        {
            await QueueIsAsync(http, aliceToken, [], cancel); // no entry left behind (the other front door's within its next publication)
        }

        await using var metadata = MetadataStores.Open(database);
        var runs = new List<(double Start, double End)>();
        foreach (var record in await metadata.ListBuildsAsync(null, 10, CancellationToken.None))
        {
            runs.Add((Uptime(client, a, alice.Environment, workspace, record, "start"), Uptime(client, a, alice.Environment, workspace, record, "end")));
        }

        Assert.Equal(2, runs.Count);
        Assert.True(runs[0].Start >= runs[1].End || runs[1].Start >= runs[0].End, $"the builds ran at once: {runs[0]} and {runs[1]}");
        Assert.Contains(logs, l => l.Contains("waiting for a build slot", StringComparison.Ordinal) && l.Contains("account limit 1 running on Kiln's front doors", StringComparison.Ordinal));
    }

    // The reason the slot is taken with the step's claim and let go while it waits: a build waiting for its account's
    // slot on B must not hold the step from another account on A. Alice (max-jobs 1) runs a long build through A, then
    // asks for another derivation through B, which waits; Bob asks for that same derivation through A, which builds it
    // at once (before Alice's first ends), and Alice's waiting request takes its result: one build of it, for both.
    // (Alice may fetch both outputs: she asked for both.)
    [Fact]
    public async Task A_build_waiting_for_its_accounts_slot_does_not_hold_the_step_from_another_account()
    {
        var client = NixClient.For("2.34.8");
        var (database, _, a, b) = TwoFrontDoors(http: false);
        using var doorA = a;
        using var doorB = b;
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, a, "alice");
        var bob = SshTests.NewLogin(client, a, "bob");
        Assert.Contains("max-jobs = 1", a.Cli("settings", "set", "alice", "max-jobs", "1"), StringComparison.Ordinal);
        var aliceThroughB = SshTests.SshEnvironment(client, b, alice.KeyFile);

        var salt = Guid.NewGuid().ToString("N");
        using var longOne = client.Start(a, [.. alice.Environment, .. TimedBuild(client, workspace, salt, "long", 12)]);
        var shared = TimedBuild(client, workspace, salt, "shared", 1);
        // Each step waits for the one before it to be under way, not for a fixed time (on a loaded CI machine three
        // seconds were not enough for the long build to start, and Alice's second build then took her free slot).
        var longStarted = await UntilLineAsync(longOne, salt); // its builder's first line: her slot is taken
        using var aliceWaits = client.Start(b, [.. aliceThroughB, .. shared]);
        var aliceWaiting = await UntilLineAsync(aliceWaits, "account limit 1 running on Kiln's front doors");
        using var bobBuilds = client.Start(a, [.. bob.Environment, .. shared]);
        var logs = await Task.WhenAll(longOne.StandardError.ReadToEndAsync(), aliceWaits.StandardError.ReadToEndAsync(), bobBuilds.StandardError.ReadToEndAsync());
        (logs[0], logs[1]) = (longStarted + logs[0], aliceWaiting + logs[1]);
        await Task.WhenAll(longOne.WaitForExitAsync(), aliceWaits.WaitForExitAsync(), bobBuilds.WaitForExitAsync());
        Assert.True(longOne.ExitCode == 0, logs[0] + a.Log);
        Assert.True(aliceWaits.ExitCode == 0, logs[1] + b.Log);
        Assert.True(bobBuilds.ExitCode == 0, logs[2] + a.Log);
        Assert.Contains("account limit 1 running on Kiln's front doors", logs[1], StringComparison.Ordinal);

        await using var metadata = MetadataStores.Open(database);
        var records = await metadata.ListBuildsAsync(null, 10, CancellationToken.None);
        Assert.Equal(2, records.Count); // the shared derivation built once
        var longRecord = records.Single(r => r.DrvPath.EndsWith("-long.drv", StringComparison.Ordinal));
        var sharedRecord = records.Single(r => r.DrvPath.EndsWith("-shared.drv", StringComparison.Ordinal));
        Assert.True(Uptime(client, a, alice.Environment, workspace, sharedRecord, "end") < Uptime(client, a, alice.Environment, workspace, longRecord, "end"),
            "the shared derivation waited for Alice's slot although Bob asked for it");
    }

    // One queue across front doors: Alice's running build (through A) and her build waiting for her slot (through B) are
    // listed through either. The waiting one has no record, so it is cancelled by derivation — here with the Cancel button
    // its row has in the *other* front door's dashboard (a real browser): her waiting request on B fails with the reason,
    // her running build goes on, and no record is made for the cancelled one. Bob cancelling the same derivation changes
    // nothing. The running build on A is then cancelled through B's API the same way (its derivation names it too).
    [Fact]
    public async Task A_build_waiting_for_its_accounts_slot_is_listed_and_cancelled_through_either_front_door()
    {
        Browser.Require();
        var client = NixClient.For("2.34.8");
        var (database, a, b, alice, aliceThroughB, aliceToken, bobToken) = AliceAtOneJob(client, "build:read,build:write");
        using var doorA = a;
        using var doorB = b;
        using var workspace = client.NewWorkspace();
        var cancel = TestContext.Current.CancellationToken;
        using var httpA = new HttpClient { BaseAddress = new Uri(a.HttpUrl) };
        using var httpB = new HttpClient { BaseAddress = new Uri(b.HttpUrl) };

        var salt = Guid.NewGuid().ToString("N");
        using var longOne = client.Start(a, [.. alice.Environment, .. TimedBuild(client, workspace, salt, "long", 120)]);
        var longLog = longOne.StandardError.ReadToEndAsync(cancel);
        for (var until = DateTime.UtcNow.AddSeconds(60); !(await ApiTests.GetJsonAsync(httpA, "/api/v1/queue", aliceToken, cancel)).GetProperty("builds").EnumerateArray()
            .Any(q => q.GetProperty("state").GetString() == "running"); await Task.Delay(100, cancel))
        {
            Assert.True(DateTime.UtcNow < until && !longLog.IsCompleted, "Alice's first build did not start running");
        }

        using var waits = client.Start(b, [.. aliceThroughB, .. TimedBuild(client, workspace, salt, "waits", 1)]);
        var waitsLog = waits.StandardError.ReadToEndAsync(cancel);
        string? derivation = null;
        for (var until = DateTime.UtcNow.AddSeconds(60); derivation is null; await Task.Delay(100, cancel))
        {
            Assert.True(DateTime.UtcNow < until && !waitsLog.IsCompleted, "front door B did not list Alice's second build as waiting for her limit");
            derivation = (await ApiTests.GetJsonAsync(httpB, "/api/v1/queue", aliceToken, cancel)).GetProperty("builds").EnumerateArray()
                .Where(q => q.GetProperty("state").GetString() == "account-limit").Select(q => q.GetProperty("derivation").GetString()).FirstOrDefault();
        }

        Assert.EndsWith("-waits.drv", derivation, StringComparison.Ordinal);
        await QueueIsAsync(httpA, aliceToken, ["running", "account-limit"], cancel); // A lists B's entry too
        await QueueIsAsync(httpB, aliceToken, ["running", "account-limit"], cancel); // and B lists A's
        Assert.Empty((await ApiTests.GetJsonAsync(httpA, "/api/v1/queue", bobToken, cancel)).GetProperty("builds").EnumerateArray());
        // The operator's farm through B: both front doors' embedded agents (A's named with its front door), A's running build.
        var operatorToken = a.Cli("token", "create", "bob", "--permissions", "server:read").Split('\n')[0];
        for (var until = DateTime.UtcNow.AddSeconds(30); ; await Task.Delay(200, cancel))
        {
            var farm = await ApiTests.GetJsonAsync(httpB, "/api/v1/farm", operatorToken, cancel);
            var agents = farm.GetProperty("agents").EnumerateArray().ToList();
            if (agents.Count == 2 && agents.Count(x => x.GetProperty("frontDoor").ValueKind == System.Text.Json.JsonValueKind.String) == 1
                && farm.GetProperty("running").GetInt32() == 1)
            {
                break;
            }

            Assert.True(DateTime.UtcNow < until, $"B's farm: {farm}");
        }

        var path = $"/api/v1/queue/cancel?derivation={Uri.EscapeDataString(derivation)}";
        Assert.Equal(System.Net.HttpStatusCode.Conflict, (await PostAsync(httpB, path, bobToken, cancel)).Status); // not Bob's request
        Assert.Equal(System.Net.HttpStatusCode.Conflict, (await PostAsync(httpA, path, bobToken, cancel)).Status);
        await Task.Delay(1500, cancel); // (had either asked B for anything, B would have carried it out by now)
        Assert.False(waits.HasExited);
        using (var browser = new Browser())
        {
            browser.Go(a.HttpUrl + "/ui/login");
            DashboardTests.LogIn(browser, aliceToken);
            // The queue redraws its table every 2 s: find the row's button and click it in one step.
            browser.Wait(d =>
            {
                var button = d.FindElements(OpenQA.Selenium.By.CssSelector("#queue-table button[data-cancel-derivation]"))
                    .FirstOrDefault(e => e.GetAttribute("data-cancel-derivation") == derivation);
                button?.Click();
                return button is not null;
            }, "the waiting build's Cancel button");
            browser.Wait(d => d.FindElement(OpenQA.Selenium.By.Id("queue-table")).Text.Contains("cancelled", StringComparison.Ordinal)
                || !d.FindElement(OpenQA.Selenium.By.Id("queue-table")).Text.Contains("waits", StringComparison.Ordinal), "the row cancelled");
        }

        var waitsText = await waitsLog.WaitAsync(TimeSpan.FromSeconds(30), cancel);
        await waits.WaitForExitAsync(cancel);
        Assert.NotEqual(0, waits.ExitCode);
        Assert.True(waitsText.Contains($"the build of '{derivation}' was cancelled through Kiln's API", StringComparison.Ordinal), waitsText);
        await QueueIsAsync(httpA, aliceToken, ["running"], cancel); // B's entry withdrawn from the board
        Assert.False(longOne.HasExited, "the cancel reached Alice's running build");
        var running = (await ApiTests.GetJsonAsync(httpB, "/api/v1/queue", aliceToken, cancel)).GetProperty("builds").EnumerateArray().Single();
        Assert.Equal("running", running.GetProperty("state").GetString());

        var longDerivation = running.GetProperty("derivation").GetString()!;
        var stopped = await PostAsync(httpB, $"/api/v1/queue/cancel?derivation={Uri.EscapeDataString(longDerivation)}", aliceToken, cancel);
        Assert.True(stopped.Status == System.Net.HttpStatusCode.Accepted, stopped.Body);
        var longText = await longLog.WaitAsync(TimeSpan.FromSeconds(30), cancel);
        await longOne.WaitForExitAsync(cancel);
        Assert.NotEqual(0, longOne.ExitCode);
        Assert.True(longText.Contains($"the build of '{longDerivation}' was cancelled through Kiln's API", StringComparison.Ordinal), longText);
        await using var metadata = MetadataStores.Open(database);
        BuildRecord? record = null;
        for (var until = DateTime.UtcNow.AddSeconds(30); record is not { Running: false }; await Task.Delay(100, cancel))
        {
            Assert.True(DateTime.UtcNow < until, "the cancelled build's record did not end");
            var records = await metadata.ListBuildsAsync(null, 10, CancellationToken.None);
            record = Assert.Single(records); // none for the build cancelled while it waited
        }

        Assert.Equal(longDerivation, $"/nix/store/{record.DrvPath}");
        Assert.Contains("cancelled through Kiln's API", record.Error, StringComparison.Ordinal);
    }

    // Waits (up to 30 s: another front door's entries are as it last published them) until the account's queue through
    // this front door lists builds in exactly these states.
    private static async Task QueueIsAsync(HttpClient http, string token, string[] states, CancellationToken cancel)
    {
        string[] seen = [];
        for (var until = DateTime.UtcNow.AddSeconds(30); ; await Task.Delay(200, cancel))
        {
            seen = [.. (await ApiTests.GetJsonAsync(http, "/api/v1/queue", token, cancel)).GetProperty("builds").EnumerateArray()
                .Select(q => q.GetProperty("state").GetString()!).Order(StringComparer.Ordinal)];
            if (seen.SequenceEqual(states.Order(StringComparer.Ordinal)))
            {
                return;
            }

            Assert.True(DateTime.UtcNow < until, $"{http.BaseAddress} lists [{string.Join(", ", seen)}], not [{string.Join(", ", states)}]");
        }
    }

    // Two front doors with HTTP; Alice (max-jobs 1) logged in through A, her key reaching B too; Bob; API tokens for both.
    private (string Database, KilnProcess A, KilnProcess B, SshTests.Login Alice, string[] AliceThroughB, string AliceToken, string BobToken) AliceAtOneJob(
        NixClient client, string permissions)
    {
        var (database, _, a, b) = TwoFrontDoors(http: true);
        try
        {
            var alice = SshTests.NewLogin(client, a, "alice");
            Assert.Contains("max-jobs = 1", a.Cli("settings", "set", "alice", "max-jobs", "1"), StringComparison.Ordinal);
            a.Cli("account", "create", "bob");
            return (database, a, b, alice, SshTests.SshEnvironment(client, b, alice.KeyFile),
                a.Cli("token", "create", "alice", "--permissions", permissions).Split('\n')[0], a.Cli("token", "create", "bob", "--permissions", permissions).Split('\n')[0]);
        }
        catch
        {
            a.Dispose();
            b.Dispose();
            throw;
        }
    }

    private static async Task<(System.Net.HttpStatusCode Status, string Body)> PostAsync(HttpClient http, string path, string token, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path);
        request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", token);
        using var response = await http.SendAsync(request, cancellationToken);
        return (response.StatusCode, await response.Content.ReadAsStringAsync(cancellationToken));
    }

    // A remote-store build of one derivation that writes the machine's uptime as it starts and ends, sleeping between.
    // A client's stderr up to and including the first line containing marker (all of it, if none does).
    private static async Task<string> UntilLineAsync(System.Diagnostics.Process process, string marker)
    {
        var read = new System.Text.StringBuilder();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        while (await process.StandardError.ReadLineAsync(timeout.Token) is { } line)
        {
            read.Append(line).Append('\n');
            if (line.Contains(marker, StringComparison.Ordinal))
            {
                break;
            }
        }

        return read.ToString();
    }

    private static string[] TimedBuild(NixClient client, string workspace, string salt, string name, int seconds) =>
    [
        "nix", "build", "-L", "--eval-store", "auto", "--store", "ssh-ng://kiln@127.0.0.1", "--no-link", "-f",
        Dag.WriteSingle(client, workspace, name, $"echo {salt}; mkdir $out; cat /proc/uptime > $out/start; sleep {seconds}; cat /proc/uptime > $out/end"),
    ];

    // The uptime a TimedBuild's output wrote (start or end), fetched through a front door.
    private static double Uptime(NixClient client, KilnProcess door, string[] environment, string workspace, BuildRecord record, string file)
    {
        var output = record.Outputs.Single().Path.FullPath;
        client.Ok(door, [.. environment, "nix", "copy", "--from", "ssh-ng://kiln@127.0.0.1", "--to", $"local?root={workspace}/got", "--no-check-sigs", output]);
        return double.Parse(File.ReadAllText(client.HostPath($"{workspace}/got{output}/{file}")).Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
    }

    // Agents may dial any front door. Both front doors are pure coordinators (no slots of their own); agent "one" is
    // dialled in to A and "two" to B, with one agent token made through A. Derivations asked for through B alone are
    // built by B's agent (fetching its inputs through B, from the bucket), and through A alone by A's; a DAG asked for through both sockets at once
    // is built once, derivation by derivation, by whichever front door's agent got its step's claim; every front door
    // lists both agents.
    [Fact]
    public async Task Remote_agents_dialled_in_to_either_front_door_build_for_both_once()
    {
        var client = NixClient.For("2.34.8");
        var (database, _, a, b) = TwoFrontDoors(http: true, "--local-slots", "0", "--agent-timeout", "5");
        using var doorA = a;
        using var doorB = b;
        using var workspace = client.NewWorkspace();
        var token = a.Cli("agent-token", "create", "farm").Trim();
        using var one = new AgentProcess(a, token, "one", slots: 2);
        using var two = new AgentProcess(b, token, "two", slots: 2);

        // What is asked for through one front door alone, that front door's agent builds.
        var salt = Guid.NewGuid().ToString("N");
        await using var metadata = MetadataStores.Open(database);
        var builtAlone = new List<BuildRecord>();
        foreach (var (door, agent, name) in new[] { (b, "two", "onb"), (a, "one", "ona") })
        {
            client.Ok(door, "nix-build", "--store", NixClient.SocketUri, Dag.Write(client, workspace, name, depth: 3, width: 2, salt: $"{salt}-{name}"), "--no-out-link");
            var built = (await metadata.ListBuildsAsync(null, 100, CancellationToken.None)).ExceptBy(builtAlone.Select(r => r.Id), r => r.Id).ToList();
            Assert.Equal(6, built.Count);
            Assert.All(built, r => Assert.True(r.Succeeded && r.Agent == agent, $"{r.DrvPath}: {r.Agent} {r.Error}"));
            builtAlone.AddRange(built);
        }

        var dag = Dag.Write(client, workspace, "bothdag", depth: 4, width: 5, salt: salt + "-both");
        using var first = client.Start(a, "nix-build", "--store", NixClient.SocketUri, dag, "--no-out-link");
        using var second = client.Start(b, "nix-build", "--store", NixClient.SocketUri, dag, "--no-out-link");
        var logs = await Task.WhenAll(first.StandardError.ReadToEndAsync(), second.StandardError.ReadToEndAsync());
        await Task.WhenAll(first.WaitForExitAsync(), second.WaitForExitAsync());
        Assert.True(first.ExitCode == 0, logs[0] + a.Log + one.Log);
        Assert.True(second.ExitCode == 0, logs[1] + b.Log + two.Log);
        var builds = (await metadata.ListBuildsAsync(null, 100, CancellationToken.None)).ExceptBy(builtAlone.Select(r => r.Id), r => r.Id).ToList(); // the DAG's
        Assert.Equal(20, builds.Count);
        Assert.Equal(20, builds.Select(r => r.DrvPath).Distinct().Count());
        Assert.All(builds, r => Assert.True(r.Succeeded && r.Agent is "one" or "two", $"{r.DrvPath}: {r.Agent} {r.Error}"));
        Assert.Equal(client.Ok(a, "nix-build", "--store", NixClient.SocketUri, dag, "--no-out-link").StdoutText,
            client.Ok(b, "nix-build", "--store", NixClient.SocketUri, dag, "--no-out-link").StdoutText);

        foreach (var door in new[] { a, b })
        {
            using var listed = System.Text.Json.JsonDocument.Parse(door.Cli("agents", "list", "--json"));
            Assert.Equal(["one", "two"], listed.RootElement.EnumerateArray().Select(x => x.GetProperty("name").GetString()).Order(StringComparer.Ordinal));
            Assert.All(listed.RootElement.EnumerateArray(), x => Assert.True(x.GetProperty("connected").GetBoolean(), x.ToString()));
        }
    }

    // The socket on shared backends, and narinfo answers across front doors: a path added through A's socket is valid
    // through B's, and its contents are in B's unpacked tree. B keeps its narinfo answer (a second GET is the same bytes), yet it changes within seconds, well
    // inside the answer cache's 30 s bound, when the path is signed and then deleted through A's socket: the change
    // reaches B's cache by the database's notification, not by expiry. The deletion takes the path's NAR from the bucket.
    [Fact]
    public async Task A_path_signed_or_deleted_through_one_front_doors_socket_changes_the_others_answers_at_once()
    {
        var client = NixClient.For("2.8.0");
        var (database, bucket, a, b) = TwoFrontDoors(http: true);
        using var doorA = a;
        using var doorB = b;
        using var workspace = client.NewWorkspace();
        var databaseName = new Npgsql.NpgsqlConnectionStringBuilder(database).Database!;
        var (source, top) = CacheAccess.SmallClosure(client, a, workspace);
        client.Ok(a, "nix", "copy", "--store", source, "--to", NixClient.SocketUri, top);
        // Nix reads a unix:// store's paths from its tree (?root=): B's tree has what was added through A by the time B
        // answers that it is valid.
        client.Ok(b, "nix", "copy", "--no-check-sigs", "--from", NixClient.SocketUri, "--to", $"local?root={workspace}/pulled", top);
        Assert.Equal(File.ReadAllBytes(client.HostPath($"{workspace}/source{top}")), File.ReadAllBytes(client.HostPath($"{workspace}/pulled{top}")));
        a.Cli("account", "set", "local", "--public-cache");

        using var http = new HttpClient { BaseAddress = new Uri(b.HttpUrl) };
        var narInfo = $"/{StorePath.Parse(top).HashPart}.narinfo";
        var kept = System.Diagnostics.Stopwatch.StartNew();
        var answer = await http.GetStringAsync(narInfo);
        Assert.DoesNotContain("Sig: later-1:", answer, StringComparison.Ordinal);
        // B answers from its cache: a change made in the database without the notification every change through Kiln
        // sends (by hand here) does not show.
        postgres.Sql(databaseName, "UPDATE paths SET nar_size = nar_size + 1");
        Assert.Equal(answer, await http.GetStringAsync(narInfo));
        postgres.Sql(databaseName, "UPDATE paths SET nar_size = nar_size - 1");

        client.Ok(a, "nix-store", "--generate-binary-cache-key", "later-1", $"{workspace}/later.secret", $"{workspace}/later.public");
        client.Ok(a, "nix", "store", "sign", "--store", NixClient.SocketUri, "--key-file", $"{workspace}/later.secret", top);
        while (!(await http.GetStringAsync(narInfo)).Contains("Sig: later-1:", StringComparison.Ordinal))
        {
            Assert.True(kept.Elapsed < TimeSpan.FromSeconds(20), "B's narinfo answer kept the path's old signatures");
            await Task.Delay(50);
        }

        Assert.Contains("later-1:", client.Ok(b, "nix", "path-info", "--sigs", "--store", NixClient.SocketUri, top).StdoutText, StringComparison.Ordinal);
        kept.Restart();
        Assert.Contains("Sig: later-1:", await http.GetStringAsync(narInfo), StringComparison.Ordinal);
        // On a shared database the collector keeps what was registered within its grace period (another front door's
        // session may still be copying that closure, leaf first): the path's registration is moved back, not waited for.
        postgres.Sql(databaseName, "UPDATE paths SET registration_time = registration_time - 3600");
        var narHash = answer.Split('\n').Single(l => l.StartsWith("NarHash: sha256:", StringComparison.Ordinal))["NarHash: sha256:".Length..];
        Assert.Contains(s3.ObjectFiles(bucket), f => f.Contains(narHash, StringComparison.Ordinal));
        client.Ok(a, "nix", "store", "delete", "--store", NixClient.SocketUri, top);
        while (true)
        {
            using var response = await http.GetAsync(narInfo);
            if (response.StatusCode == System.Net.HttpStatusCode.NotFound)
            {
                break;
            }

            Assert.True(kept.Elapsed < TimeSpan.FromSeconds(20), "B's narinfo answer kept a deleted path");
            await Task.Delay(50);
        }

        Assert.NotEqual(0, client.Run(b, "nix", "path-info", "--store", NixClient.SocketUri, top).ExitCode);
        Assert.DoesNotContain(s3.ObjectFiles(bucket), f => f.Contains(narHash, StringComparison.Ordinal)); // the collection took its NAR from the bucket
    }

    // A front door killed in the middle of a build: its claim lapses and another front door builds the step for the
    // client waiting there, which simply succeeds; the lost front door's build is recorded as failed, once. A client of
    // the surviving front door building something else all along carries on as if nothing happened.
    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task When_a_front_door_is_killed_mid_build_another_takes_the_build_over(string version)
    {
        var client = NixClient.For(version);
        var (database, _, a, b) = TwoFrontDoors(http: false, "--step-claim-lease", "4");
        using var doorA = a;
        using var doorB = b;
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, a, "alice");
        var throughA = alice.Environment;
        var throughB = SshTests.SshEnvironment(client, b, alice.KeyFile);

        var slow = Dag.WriteSingle(client, workspace, "slow", $"echo {Guid.NewGuid():N}; sleep 8; mkdir $out");
        var other = Dag.WriteSingle(client, workspace, "other", $"echo {Guid.NewGuid():N}; sleep 6; mkdir $out");
        string[] evalStore = client.Is23 ? [] : ["--eval-store", "auto"];
        string[] build = ["nix", "build", .. evalStore, "--store", "ssh-ng://kiln@127.0.0.1", "-f", slow, "--no-link"];
        using var onA = client.Start(a, [.. throughA, .. build]);
        await using var metadata = MetadataStores.Open(database);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!(await metadata.ListBuildsAsync(null, 10, CancellationToken.None)).Any(r => r.Running))
        {
            Assert.True(DateTime.UtcNow < deadline, "the build never started on A");
            await Task.Delay(100);
        }

        using var onB = client.Start(b, [.. throughB, .. build]);
        var bErrors = onB.StandardError.ReadToEndAsync();
        using var elsewhere = client.Start(b, [.. throughB, "nix", "build", .. evalStore, "--store", "ssh-ng://kiln@127.0.0.1", "-f", other, "--no-link"]);
        var elsewhereErrors = elsewhere.StandardError.ReadToEndAsync();
        while ((await metadata.ListBuildsAsync(null, 10, CancellationToken.None)).Count(r => r.Running) < 2)
        {
            Assert.True(DateTime.UtcNow < deadline, "B never started the other build" + b.Log);
            await Task.Delay(100);
        }

        await Task.Delay(1500); // B's first client is waiting on A's claim
        a.Kill();
        await onB.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(90));
        Assert.True(onB.ExitCode == 0, await bErrors);
        await elsewhere.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(90));
        Assert.True(elsewhere.ExitCode == 0, await elsewhereErrors);
        await onA.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.NotEqual(0, onA.ExitCode);

        // The lost build is recorded as failed by B once A's claim has lapsed (B looks every third of a lease).
        var builds = await metadata.ListBuildsAsync(null, 10, CancellationToken.None);
        deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (builds.Any(r => r.Running) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(200);
            builds = await metadata.ListBuildsAsync(null, 10, CancellationToken.None);
        }

        Assert.Equal(3, builds.Count);
        Assert.Single(builds, r => r.Succeeded && r.DrvPath.EndsWith("-slow.drv", StringComparison.Ordinal));
        Assert.Single(builds, r => r.Succeeded && r.DrvPath.EndsWith("-other.drv", StringComparison.Ordinal));
        var lost = Assert.Single(builds, r => !r.Succeeded);
        Assert.EndsWith("-slow.drv", lost.DrvPath, StringComparison.Ordinal);
        Assert.False(lost.Running);
        Assert.Contains("went away", lost.Error, StringComparison.Ordinal);
    }
}
