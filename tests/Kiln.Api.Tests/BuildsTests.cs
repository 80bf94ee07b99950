using System.Net.Http.Headers;
using System.Text.Json;
using Kiln.Nix.StorePaths;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Routing;

namespace Kiln.Api.Tests;

/// <summary>Builds through the API: pages, filters, one build, its log whole and followed live; and the OpenAPI document.</summary>
public sealed class BuildsTests : ApiFixture
{
    [Fact]
    public async Task Pages_follow_the_cursor_through_every_build_and_filters_select_by_status_and_time()
    {
        var token = await TokenAsync("alice", KeyPermissions.BuildRead);
        var ids = new List<long>();
        for (var i = 0; i < 5; i++)
        {
            ids.Add(await BuildAsync("alice", $"b{i}", succeeded: i != 3, started: 1_000 + (100 * i)));
        }

        ids.Add(await BuildAsync("alice", "b5", running: true, started: 1_500));
        var seen = new List<long>();
        string? cursor = null;
        var pages = 0;
        do
        {
            var page = await PageAsync(token, $"limit=2{(cursor is null ? "" : "&cursor=" + cursor)}");
            seen.AddRange(page.RootElement.GetProperty("builds").EnumerateArray().Select(b => b.GetProperty("id").GetInt64()));
            cursor = page.RootElement.GetProperty("next").GetString();
            pages++;
        }
        while (cursor is not null);
        Assert.Equal(Enumerable.Reverse(ids), seen);
        Assert.Equal(4, pages); // three full pages, then an empty last one

        Assert.Equal([ids[3]], Ids(await PageAsync(token, "status=failed")));
        Assert.Equal([ids[5]], Ids(await PageAsync(token, "status=running")));
        Assert.Equal([ids[2], ids[1]], Ids(await PageAsync(token, "since=1100&until=1970-01-01T00:21:40Z")));
        foreach (var bad in new[] { "status=cooking", "limit=0", "limit=1001", "limit=x", "cursor=-1", "since=yesterday" })
        {
            var (status, body, type) = await GetAsync($"/api/v1/builds?{bad}", token);
            Assert.True(status == 400 && type == "application/problem+json", $"{bad}: {status} {body}");
        }
    }

    [Fact]
    public async Task A_build_shows_its_outcome_usage_and_log()
    {
        var token = await TokenAsync("alice", KeyPermissions.BuildRead);
        var id = await BuildAsync("alice", "hello", succeeded: false, attempts: 3, log: ["compiling", "error: it broke"]);
        var (status, body, _) = await GetAsync($"/api/v1/builds/{id}", token);
        Assert.Equal(200, status);
        var build = JsonDocument.Parse(body).RootElement;
        Assert.Equal("failed", build.GetProperty("status").GetString());
        Assert.Equal("PermanentFailure", build.GetProperty("failure").GetString());
        Assert.Equal("builder failed with exit code 1", build.GetProperty("error").GetString());
        Assert.EndsWith("-hello.drv", build.GetProperty("derivation").GetString(), StringComparison.Ordinal);
        Assert.Equal((3L, 2.0, 0.5, 64L << 20, "started"), (build.GetProperty("seconds").GetInt64(), build.GetProperty("cpuUserSeconds").GetDouble(),
            build.GetProperty("cpuSystemSeconds").GetDouble(), build.GetProperty("peakMemory").GetInt64(), build.GetProperty("relation").GetString()));
        Assert.Equal((3, 2), (build.GetProperty("attempts").GetInt32(), build.GetProperty("retries").GetInt32()));
        var log = await GetAsync($"/api/v1/builds/{id}/log", token);
        Assert.Equal((200, "compiling\nerror: it broke\n", "text/plain"), log);
        Assert.Equal(404, (await GetAsync("/api/v1/builds/999999", token)).Status);
        Assert.Equal(404, (await GetAsync("/api/v1/builds/xyz", token)).Status);
    }

    [Fact]
    public async Task Cancelling_asks_the_scheduler_for_the_callers_account_and_a_finished_build_is_a_conflict()
    {
        var token = await TokenAsync("alice", KeyPermissions.BuildWrite);
        var running = await BuildAsync("alice", "long", running: true);
        var done = await BuildAsync("alice", "short");
        var (status, body, _) = await SendAsync(HttpMethod.Post, $"/api/v1/builds/{running}/cancel", token);
        Assert.True(status == 202, body);
        var alice = await Store.Accounts.GetOrCreateAccountAsync("alice", default);
        Assert.Equal([(running, alice)], Control.Cancelled);
        var ended = await SendAsync(HttpMethod.Post, $"/api/v1/builds/{done}/cancel", token);
        Assert.Equal(409, ended.Status);
        Assert.Equal("conflict", JsonDocument.Parse(ended.Body).RootElement.GetProperty("code").GetString());
        Assert.Single(Control.Cancelled);
    }

    // A build waiting for its account's limit has no record (no id): it is cancelled by derivation, for the caller's
    // account only; what is not a derivation is refused before the scheduler is asked; nothing to cancel is a conflict.
    [Fact]
    public async Task Cancelling_by_derivation_asks_the_scheduler_for_the_callers_account_and_needs_build_write()
    {
        var token = await TokenAsync("alice", KeyPermissions.BuildWrite);
        var reader = await TokenAsync("alice", KeyPermissions.BuildRead);
        var alice = await Store.Accounts.GetOrCreateAccountAsync("alice", default);
        var drv = StorePath.FromBaseName(new string('a', 32) + "-waits.drv").ToString();
        var (status, body, _) = await SendAsync(HttpMethod.Post, $"/api/v1/queue/cancel?derivation={Uri.EscapeDataString(drv)}", token);
        Assert.True(status == 202, body);
        var done = JsonDocument.Parse(body).RootElement;
        Assert.Equal((drv, 1), (done.GetProperty("derivation").GetString(), done.GetProperty("requests").GetInt32()));
        Assert.Equal([(drv, alice)], Control.CancelledDerivations);

        var none = await SendAsync(HttpMethod.Post, $"/api/v1/queue/cancel?derivation={Uri.EscapeDataString(StorePath.FromBaseName(new string('b', 32) + "-nothing-here.drv").ToString())}", token);
        Assert.Equal(409, none.Status);
        Assert.Equal("conflict", JsonDocument.Parse(none.Body).RootElement.GetProperty("code").GetString());
        foreach (var bad in new[] { "", "?derivation=", "?derivation=%2Fnix%2Fstore%2Fnot-a-path.drv", $"?derivation={Uri.EscapeDataString(StorePath.FromBaseName(new string('c', 32) + "-out").ToString())}" })
        {
            var refused = await SendAsync(HttpMethod.Post, "/api/v1/queue/cancel" + bad, token);
            Assert.True(refused.Status == 400, $"{bad}: {refused.Status} {refused.Body}");
        }

        Assert.Equal(403, (await SendAsync(HttpMethod.Post, $"/api/v1/queue/cancel?derivation={Uri.EscapeDataString(drv)}", reader)).Status);
        Assert.Equal(401, (await SendAsync(HttpMethod.Post, $"/api/v1/queue/cancel?derivation={Uri.EscapeDataString(drv)}", null)).Status);
        Assert.Equal(2, Control.CancelledDerivations.Count); // the valid one and the one with nothing to cancel
    }

    [Fact]
    public async Task Following_a_running_builds_log_streams_its_lines_in_order_as_events_then_the_end()
    {
        var cancel = TestContext.Current.CancellationToken;
        var token = await TokenAsync("alice", KeyPermissions.BuildRead);
        var id = await BuildAsync("alice", "slow", running: true);
        var writer = Store.Logs.Create(id);
        writer.AppendLine("line 1");
        using var request = new HttpRequestMessage(HttpMethod.Get, $"/api/v1/builds/{id}/log?follow=1");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var response = await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancel);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var events = new StreamReader(await response.Content.ReadAsStreamAsync(cancel));

        // Each line arrives while the build still runs: the next is written only once the last was read.
        Assert.Equal(["id: 1", "event: line", "data: line 1", ""], await ReadEventAsync(events, cancel));
        for (var i = 2; i <= 50; i++)
        {
            writer.AppendLine($"line {i}\r");
            Assert.Equal([$"id: {i}", "event: line", $"data: line {i}", ""], await ReadEventAsync(events, cancel));
        }

        writer.Dispose();
        await Store.Builds.FinishBuildAsync(id, new BuildEnd(true, "", "", 2_000, null, null, null, []), cancel);
        Assert.Equal(["event: end", "data: built", ""], await ReadEventAsync(events, cancel));
        Assert.Null(await events.ReadLineAsync(cancel));

        // A client reconnecting after event 48 gets the rest.
        using var again = new HttpRequestMessage(HttpMethod.Get, $"/api/v1/builds/{id}/log");
        again.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        again.Headers.Accept.ParseAdd("text/event-stream");
        again.Headers.Add("Last-Event-ID", "48");
        using var resumed = await Http.SendAsync(again, cancel);
        Assert.Equal("id: 49\nevent: line\ndata: line 49\n\nid: 50\nevent: line\ndata: line 50\n\nevent: end\ndata: built\n\n", await resumed.Content.ReadAsStringAsync(cancel));
    }

    [Fact]
    public async Task A_followed_log_stops_when_its_token_is_revoked_and_an_account_follows_a_bounded_number()
    {
        var cancel = TestContext.Current.CancellationToken;
        BuildEndpoints.RecheckInterval = TimeSpan.FromMilliseconds(200);
        var token = await TokenAsync("alice", KeyPermissions.BuildRead | KeyPermissions.AccountWrite);
        var id = await BuildAsync("alice", "forever", running: true);
        using var writer = Store.Logs.Create(id);
        writer.AppendLine("first");
        var streams = new List<HttpResponseMessage>();
        try
        {
            for (var i = 0; i < 32; i++)
            {
                streams.Add(await FollowAsync(token, id, cancel));
                Assert.Equal(System.Net.HttpStatusCode.OK, streams[^1].StatusCode);
            }

            using (var refused = await FollowAsync(token, id, cancel))
            {
                Assert.Equal(429, (int)refused.StatusCode);
            }

            // Revoked (by another token of the account): the open streams end without the build ending.
            var other = await TokenAsync("alice");
            var tokenId = JsonDocument.Parse((await GetAsync("/api/v1/me", token)).Body).RootElement.GetProperty("token").GetProperty("id").GetInt64();
            Assert.Equal(204, (await SendAsync(HttpMethod.Delete, $"/api/v1/tokens/{tokenId}", other)).Status);
            using var events = new StreamReader(await streams[0].Content.ReadAsStreamAsync(cancel));
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancel);
            timeout.CancelAfter(TimeSpan.FromSeconds(10));
            var text = await events.ReadToEndAsync(timeout.Token);
            Assert.Contains("data: first", text, StringComparison.Ordinal);
            Assert.DoesNotContain("event: end", text, StringComparison.Ordinal);
        }
        finally
        {
            streams.ForEach(s => s.Dispose());
            BuildEndpoints.RecheckInterval = TimeSpan.FromSeconds(30);
        }
    }

    private async Task<HttpResponseMessage> FollowAsync(string token, long id, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, $"/api/v1/builds/{id}/log?follow=1");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return await Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
    }

    [Fact]
    public async Task The_OpenAPI_document_lists_every_endpoint_and_its_problems()
    {
        var (status, body, _) = await GetAsync(KilnApi.OpenApiPath, token: null);
        Assert.Equal(200, status);
        var document = JsonDocument.Parse(body).RootElement;
        Assert.StartsWith("3.", document.GetProperty("openapi").GetString(), StringComparison.Ordinal);
        var documented = document.GetProperty("paths").EnumerateObject()
            .SelectMany(p => p.Value.EnumerateObject().Select(m => $"{m.Name.ToUpperInvariant()} {p.Name}")).ToHashSet();

        // Every endpoint the API maps (but the document itself and the catch-all for unknown paths) is in it.
        var mapped = Services<EndpointDataSource>().SelectMany(s => s.Endpoints).OfType<RouteEndpoint>()
            .Where(e => e.RoutePattern.RawText!.StartsWith(KilnApi.Prefix, StringComparison.Ordinal) && !e.RoutePattern.RawText.Contains("**", StringComparison.Ordinal)
                && e.RoutePattern.RawText != KilnApi.OpenApiPath)
            .SelectMany(e => e.Metadata.GetMetadata<HttpMethodMetadata>()!.HttpMethods.Select(m => $"{m} {e.RoutePattern.RawText!.Replace(":long", "", StringComparison.Ordinal)}"))
            .ToHashSet();
        Assert.True(mapped.Count >= 11, string.Join(", ", mapped));
        Assert.Subset(documented, mapped);
        Assert.Equal("#/components/schemas/BuildPage", document.GetProperty("paths").GetProperty("/api/v1/builds").GetProperty("get").GetProperty("responses")
            .GetProperty("200").GetProperty("content").GetProperty("application/json").GetProperty("schema").GetProperty("$ref").GetString());
        Assert.True(document.GetProperty("paths").GetProperty("/api/v1/builds/{id}").GetProperty("get").GetProperty("responses").TryGetProperty("404", out var notFound));
        Assert.True(notFound.GetProperty("content").TryGetProperty("application/problem+json", out _));
    }

    private static long[] Ids(JsonDocument page) => [.. page.RootElement.GetProperty("builds").EnumerateArray().Select(b => b.GetProperty("id").GetInt64())];

    private async Task<JsonDocument> PageAsync(string token, string query)
    {
        var (status, body, _) = await GetAsync($"/api/v1/builds?{query}", token);
        Assert.True(status == 200, $"{query}: {status} {body}");
        return JsonDocument.Parse(body);
    }

    private static async Task<string[]> ReadEventAsync(StreamReader events, CancellationToken cancellationToken)
    {
        var lines = new List<string>();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(10));
        while (await events.ReadLineAsync(timeout.Token) is { } line)
        {
            lines.Add(line);
            if (line.Length == 0)
            {
                break;
            }
        }

        return [.. lines];
    }
}
