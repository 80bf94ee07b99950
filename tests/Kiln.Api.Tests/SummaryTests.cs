using System.Text.Json;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Http;

namespace Kiln.Api.Tests;

/// <summary>CI summaries by tag, and the signed log links they carry.</summary>
public sealed class SummaryTests : ApiFixture
{
    [Fact]
    public async Task A_tags_summary_counts_built_reused_and_failed_builds_and_links_failed_logs()
    {
        var token = await TokenAsync("alice", KeyPermissions.BuildRead);
        var alice = await Store.Accounts.GetOrCreateAccountAsync("alice", default);
        var bob = await Store.Accounts.GetOrCreateAccountAsync("bob", default);
        BuildTag[] run1 = [BuildTag.Parse("ci-run=1")];
        foreach (var name in new[] { "one", "two" })
        {
            await Store.Builds.TagBuildAsync(await BuildAsync("alice", name, started: 1000), alice, run1, default);
        }

        var reused = await BuildAsync("bob", "bobs", started: 900); // Bob built it; Alice's run reused it
        await Store.Builds.AddBuildAccountAsync(reused, alice, default);
        await Store.Builds.TagBuildAsync(reused, alice, run1, default);
        var failed = await BuildAsync("alice", "broken", succeeded: false, log: ["it broke | badly"]);
        var phishing = await BuildAsync("alice", "phish", succeeded: false, error: "see [the fix](http://evil.example) \u001b[31m<img src=x>\u202e");
        await Store.Builds.TagBuildAsync(phishing, alice, run1, default);
        await Store.Builds.TagBuildAsync(failed, alice, run1, default);
        await Store.Builds.TagBuildAsync(await BuildAsync("alice", "other-run"), alice, [BuildTag.Parse("ci-run=2")], default);
        await Store.Builds.TagBuildAsync(reused, bob, [BuildTag.Parse("ci-run=1")], default); // Bob's own tag: not Alice's

        var (status, body, _) = await GetAsync("/api/v1/builds/summary?tag=ci-run=1", token);
        Assert.True(status == 200, body);
        var summary = JsonDocument.Parse(body).RootElement;
        Assert.Equal((5, 2, 1, 2, 0), (summary.GetProperty("builds").GetInt32(), summary.GetProperty("built").GetInt32(), summary.GetProperty("reused").GetInt32(),
            summary.GetProperty("failed").GetInt32(), summary.GetProperty("running").GetInt32()));
        Assert.Equal(12.5, summary.GetProperty("cpuSeconds").GetDouble()); // 2.5 s each
        Assert.Equal(15, summary.GetProperty("buildSeconds").GetInt64());
        var link = summary.GetProperty("failures").EnumerateArray().Single(f => f.GetProperty("id").GetInt64() == failed).GetProperty("log").GetString()!;

        // The link reads that log without a token; altered or expired, it reads nothing.
        var path = new Uri(link).PathAndQuery;
        Assert.Equal((200, "it broke | badly\n"), (await GetAsync(path, null)) is var (s, b, _) ? (s, b) : default);
        var other = await BuildAsync("alice", "secret", log: ["hunter2"]);
        foreach (var altered in new[]
        {
            path.Replace($"/{failed}/", $"/{other}/", StringComparison.Ordinal),
            path.Replace("expires=", "expires=1", StringComparison.Ordinal),
            path[..^1] + (path[^1] == '0' ? '1' : '0'),
            path[..path.IndexOf("&signature", StringComparison.Ordinal)],
        })
        {
            var (alteredStatus, alteredBody, _) = await GetAsync(altered, null);
            Assert.True(alteredStatus == 403, $"{altered}: {alteredStatus} {alteredBody}");
            Assert.DoesNotContain("hunter2", alteredBody, StringComparison.Ordinal);
        }

        var expired = await new LogLinks(Store).LinkAsync(new DefaultHttpContext { Request = { Scheme = "http", Host = new HostString("kiln") } }.Request,
            failed, DateTimeOffset.UtcNow.AddSeconds(-1));
        Assert.Equal(403, (await GetAsync(new Uri(expired).PathAndQuery, null)).Status);
        var fresh = await new LogLinks(Store).LinkAsync(new DefaultHttpContext { Request = { Scheme = "http", Host = new HostString("kiln") } }.Request,
            failed, DateTimeOffset.UtcNow.AddMinutes(1));
        Assert.Equal(200, (await GetAsync(new Uri(fresh).PathAndQuery, null)).Status);

        // Markdown: the same counts, the failure escaped onto one line with its link.
        var markdown = await GetAsync("/api/v1/builds/summary?tag=ci-run=1&format=markdown", token);
        Assert.Equal("text/markdown", markdown.ContentType);
        Assert.Contains("| 2 | 1 | 2 | 0 | 12.5 s | 15 s |", markdown.Body, StringComparison.Ordinal);
        Assert.Contains("- `phish.drv`: see \\[the fix\\]\\(http://evil.example\\) \\[31m\\<img src=x\\> ([log](http", markdown.Body, StringComparison.Ordinal);
        Assert.Contains("- `broken.drv`: builder failed with exit code 1 ([log](http", markdown.Body, StringComparison.Ordinal);
        // And to the build's page on the dashboard, which exists for the account.
        var page = System.Text.RegularExpressions.Regex.Match(markdown.Body, @"\[build\]\((http://[^)]+)\)").Groups[1].Value;
        Assert.Matches($"^http://localhost{LogLinks.DashboardBuilds}[0-9]+$", page);
        using (var request = new HttpRequestMessage(HttpMethod.Get, new Uri(page).PathAndQuery))
        {
            request.Headers.Add("Cookie", $"{BrowserSessions.CookieName}={token}");
            using var response = await Http.SendAsync(request, TestContext.Current.CancellationToken);
            Assert.Equal(System.Net.HttpStatusCode.OK, response.StatusCode);
        }

        // With --public-url, links are made with it (a proxy's https address), not the address the request came to.
        var proxied = await new LogLinks(Store, new Uri("https://kiln.example.com/")).LinkAsync(
            new DefaultHttpContext { Request = { Scheme = "http", Host = new HostString("127.0.0.1:8080") } }.Request, failed, DateTimeOffset.UtcNow.AddMinutes(1));
        Assert.StartsWith($"https://kiln.example.com{LogLinks.Path}/{failed}/log?", proxied, StringComparison.Ordinal);

        // The filter on listings, and a build's own tags.
        var listed = JsonDocument.Parse((await GetAsync("/api/v1/builds?tag=ci-run=2", token)).Body).RootElement.GetProperty("builds");
        Assert.Single(listed.EnumerateArray());
        var shown = JsonDocument.Parse((await GetAsync($"/api/v1/builds/{reused}", token)).Body).RootElement;
        Assert.Equal(["ci-run=1"], shown.GetProperty("tags").EnumerateArray().Select(t => t.GetString()));
        Assert.Equal(400, (await GetAsync("/api/v1/builds?tag=novalue", token)).Status);
        Assert.Equal(400, (await GetAsync("/api/v1/builds/summary?format=pdf", token)).Status);
    }

    [Fact]
    public async Task Usage_counts_the_builds_the_account_started_per_day_and_its_store()
    {
        var token = await TokenAsync("alice", KeyPermissions.BuildRead);
        const long Day = 86_400;
        await BuildAsync("alice", "a", started: (Day * 20_000) + 10); // 2024-10-04
        await BuildAsync("alice", "b", succeeded: false, started: (Day * 20_000) + 100);
        await BuildAsync("alice", "c", started: (Day * 20_001) + 5);
        var shared = await BuildAsync("bob", "d", started: (Day * 20_001) + 6);
        await Store.Builds.AddBuildAccountAsync(shared, await Store.Accounts.GetOrCreateAccountAsync("alice", default), default);
        var file = await PathAsync("alice", "file", "twelve bytes");
        await PathAsync("bob", "bobs", "bob's bytes are his own");
        using (var view = await Store.OpenViewAsync("alice", default))
        {
            await (await view.OpenNarAsync(file, default))!.DisposeAsync(); // a download, as NarFromPath
            await (await view.OpenNarAsync(file, default))!.DisposeAsync();
        }

        var (status, body, _) = await GetAsync("/api/v1/usage", token);
        Assert.True(status == 200, body);
        var usage = JsonDocument.Parse(body).RootElement;
        var periods = usage.GetProperty("periods").EnumerateArray().Select(p => (p.GetProperty("start").GetString(), p.GetProperty("builds").GetInt32(),
            p.GetProperty("succeeded").GetInt32(), p.GetProperty("cpuHours").GetDouble(), p.GetProperty("wallHours").GetDouble())).ToList();
        var today = DateTime.UtcNow.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal([("2024-10-04", 2, 1, Math.Round(5.0 / 3600, 4), Math.Round(6.0 / 3600, 4)), ("2024-10-05", 1, 1, Math.Round(2.5 / 3600, 4), Math.Round(3.0 / 3600, 4)),
            (today, 0, 0, 0, 0)], periods);
        Assert.Equal(1, usage.GetProperty("storage").GetProperty("paths").GetInt32());
        var narBytes = usage.GetProperty("storage").GetProperty("narBytes").GetInt64();
        Assert.True(narBytes > 12);

        // Today's bytes moved: the upload once, the download twice; bob's upload is his (written or still pending alike).
        var moved = usage.GetProperty("periods")[2];
        Assert.Equal((narBytes, 2 * narBytes), (moved.GetProperty("uploadedBytes").GetInt64(), moved.GetProperty("downloadedBytes").GetInt64()));
        await Store.Usage.FlushAsync(default);
        moved = JsonDocument.Parse((await GetAsync("/api/v1/usage", token)).Body).RootElement.GetProperty("periods")[2];
        Assert.Equal((narBytes, 2 * narBytes), (moved.GetProperty("uploadedBytes").GetInt64(), moved.GetProperty("downloadedBytes").GetInt64()));
        var months = JsonDocument.Parse((await GetAsync("/api/v1/usage?by=month&since=2024-10-05", token)).Body).RootElement.GetProperty("periods");
        Assert.Equal(["2024-10", DateTime.UtcNow.ToString("yyyy-MM", System.Globalization.CultureInfo.InvariantCulture)], months.EnumerateArray().Select(m => m.GetProperty("start").GetString()));
        Assert.Equal(400, (await GetAsync("/api/v1/usage?by=week", token)).Status);
    }

    [Fact]
    public async Task A_deleted_accounts_tokens_and_signed_log_links_stop_working()
    {
        var token = await TokenAsync("alice", KeyPermissions.BuildRead);
        var failed = await BuildAsync("alice", "broken", succeeded: false, log: ["the secret of the failure"]);
        var link = new Uri(await new LogLinks(Store).LinkAsync(new DefaultHttpContext { Request = { Scheme = "http", Host = new HostString("kiln") } }.Request,
            failed, DateTimeOffset.UtcNow.AddMinutes(5))).PathAndQuery;
        Assert.Equal(200, (await GetAsync(link, null)).Status);
        Assert.Equal(200, (await GetAsync("/api/v1/me", token)).Status);

        var alice = (await Store.Accounts.FindAccountAsync("alice", default))!;
        Assert.Equal((1, 0), await Store.DeleteAccountAsync(alice.Id, default));

        Assert.Equal(401, (await GetAsync("/api/v1/me", token)).Status);
        var (status, body, _) = await GetAsync(link, null);
        Assert.True(status == 403, $"{status} {body}");
        Assert.DoesNotContain("secret of the failure", body, StringComparison.Ordinal);
        Assert.Null(await Store.Logs.OpenReadAsync(failed, 0, default)); // the log itself is gone
    }

    [Fact]
    public async Task Usage_shows_the_accounts_storage_over_time_from_the_daily_samples_and_today_from_now()
    {
        var token = await TokenAsync("alice", KeyPermissions.BuildRead);
        await PathAsync("alice", "first", "one");
        await PathAsync("bob", "bobs", "bob's much larger file, which alice must not be counted for");
        await Store.SampleStorageAsync(20_000, default); // 2024-10-04
        await PathAsync("alice", "second", "two");
        await Store.SampleStorageAsync(20_001, default);
        await Store.SampleStorageAsync(20_040, default); // 2024-11-13
        await PathAsync("alice", "third", "three");

        static List<(string?, long, long)> History(string body) => [.. JsonDocument.Parse(body).RootElement.GetProperty("storageHistory").EnumerateArray()
            .Select(p => (p.GetProperty("start").GetString(), p.GetProperty("paths").GetInt64(), p.GetProperty("narBytes").GetInt64()))];
        var days = History((await GetAsync("/api/v1/usage?since=2024-10-01&until=2024-10-06", token)).Body);
        Assert.Equal(["2024-10-04", "2024-10-05"], days.Select(d => d.Item1));
        Assert.Equal([1L, 2L], days.Select(d => d.Item2));
        Assert.True(days[1].Item3 > days[0].Item3 && days[0].Item3 < 200, $"{days[0].Item3}: another account's path counted");

        // Per month, the last sample of each; this month's is the storage now (three paths), whatever was sampled.
        var months = History((await GetAsync("/api/v1/usage?by=month&since=2024-10-01", token)).Body);
        Assert.Equal(["2024-10", "2024-11", DateTime.UtcNow.ToString("yyyy-MM", System.Globalization.CultureInfo.InvariantCulture)], months.Select(m => m.Item1));
        Assert.Equal([2L, 2L, 3L], months.Select(m => m.Item2));
    }

    [Fact]
    public async Task A_listing_bounded_at_the_number_of_builds_is_whole_and_one_below_it_says_it_is_cut()
    {
        for (var i = 0; i < 5; i++)
        {
            await BuildAsync("alice", $"b{i}");
        }

        using var view = await Store.OpenViewAsync("alice", TestContext.Current.CancellationToken);
        var (all, cut) = await BuildListing.ReadAsync(view, new Kiln.Store.Metadata.BuildQuery(), 5, TestContext.Current.CancellationToken);
        Assert.Equal((5, false), (all.Count, cut));
        var (first, truncated) = await BuildListing.ReadAsync(view, new Kiln.Store.Metadata.BuildQuery(), 4, TestContext.Current.CancellationToken);
        Assert.Equal((4, true), (first.Count, truncated));
        Assert.Equal(all.Take(4).Select(b => b.Id), first.Select(b => b.Id));
    }
}
