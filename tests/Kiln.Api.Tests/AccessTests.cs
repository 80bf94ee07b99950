using System.Text.Json;
using Kiln.Store.Accounts;

namespace Kiln.Api.Tests;

/// <summary>
/// Who sees what, as one table over every endpoint: without a valid token nothing answers; with Bob's token nothing of
/// Alice's (her builds, logs, paths, tokens) is there, and the answer is the one for something that never existed; a
/// token without an endpoint's permission is refused with a problem document naming it.
/// </summary>
public sealed class AccessTests : ApiFixture
{
    // Every endpoint, with the permission it needs; {build}, {path} and {token} are Alice's.
    // (With a token holding just the permission, each answers 2xx, but adding a key without its proof: 400.)
    private static readonly (string Method, string Path, KeyPermissions Needs, string? Body)[] Endpoints =
    [
        ("GET", "/api/v1/me", KeyPermissions.None, null),
        ("GET", "/api/v1/builds", KeyPermissions.BuildRead, null),
        ("GET", "/api/v1/builds/summary", KeyPermissions.BuildRead, null),
        ("GET", "/api/v1/builds/summary?format=markdown", KeyPermissions.BuildRead, null),
        ("GET", "/api/v1/builds/{build}", KeyPermissions.BuildRead, null),
        ("GET", "/api/v1/usage?by=month", KeyPermissions.BuildRead, null),
        ("GET", "/api/v1/queue", KeyPermissions.BuildRead, null),
        ("GET", "/api/v1/farm", KeyPermissions.ServerRead, null),
        ("GET", "/api/v1/builds/{build}/log", KeyPermissions.BuildRead, null),
        ("GET", "/api/v1/builds/{build}/log?follow=1", KeyPermissions.BuildRead, null),
        ("POST", "/api/v1/builds/{running}/cancel", KeyPermissions.BuildWrite, null),
        ("GET", "/api/v1/keys", KeyPermissions.AccountWrite, null),
        ("POST", "/api/v1/keys", KeyPermissions.AccountWrite, """{"key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHpBzbLmDqSDwAmDW4s1sMA95u3PzYLE3Ce8C1p8DZyY new"}"""),
        ("DELETE", "/api/v1/keys?fingerprint={key}", KeyPermissions.AccountWrite, null),
        ("GET", "/api/v1/tokens", KeyPermissions.AccountWrite, null),
        ("POST", "/api/v1/tokens", KeyPermissions.AccountWrite, """{"permissions":["account:write"]}"""),
        ("DELETE", "/api/v1/tokens/{token}", KeyPermissions.AccountWrite, null),
        ("GET", "/api/v1/signing-key", KeyPermissions.None, null),
        ("POST", "/api/v1/signing-key", KeyPermissions.AccountWrite, "{}"),
        ("GET", "/api/v1/settings", KeyPermissions.AccountWrite, null),
        ("GET", "/api/v1/paths/{path}", KeyPermissions.StoreRead, null),
        ("GET", "/api/v1/pins", KeyPermissions.StoreRead, null),
        ("DELETE", "/api/v1/pins?name=pin-of-hers", KeyPermissions.StoreWrite, null),
    ];

    [Fact]
    public async Task Every_endpoint_but_the_OpenAPI_document_wants_a_valid_token()
    {
        var revoked = await TokenAsync("alice");
        var (_, body, _) = await GetAsync("/api/v1/me", revoked);
        var id = JsonDocument.Parse(body).RootElement.GetProperty("token").GetProperty("id").GetInt64();
        Assert.Equal(204, (await SendAsync(HttpMethod.Delete, $"/api/v1/tokens/{id}", revoked)).Status); // it revokes itself
        var expired = await TokenAsync("alice", expires: DateTimeOffset.UtcNow.AddSeconds(1));
        await Task.Delay(2100, TestContext.Current.CancellationToken);
        var (alice, _) = await AliceAsync();
        foreach (var (method, path, _, json) in Endpoints)
        {
            foreach (var token in new[] { null, "", "kiln_" + new string('0', 48), "not-a-token", revoked, expired })
            {
                var (status, answer, type) = await SendAsync(new HttpMethod(method), Fill(path, alice), token, json);
                Assert.True(status == 401, $"{method} {path} with {token ?? "no token"}: {status} {answer}");
                Assert.Equal("application/problem+json", type);
                Assert.Equal("unauthorized", JsonDocument.Parse(answer).RootElement.GetProperty("code").GetString());
            }
        }

        Assert.Equal(200, (await GetAsync(KilnApi.OpenApiPath, null)).Status);
    }

    [Fact]
    public async Task Bobs_token_sees_nothing_of_Alices_builds_logs_paths_or_tokens()
    {
        var (alice, aliceToken) = await AliceAsync();
        var bob = await TokenAsync("bob");
        await BuildAsync("bob", "bobs-own", log: ["bob's line"]);
        foreach (var (method, path, _, json) in Endpoints)
        {
            var (status, body, _) = await SendAsync(new HttpMethod(method), Fill(path, alice), bob, json);
            Assert.True(status is 200 or 201 or 204 or 404 || (status == 400 && body.Contains("proof-required", StringComparison.Ordinal))
                || (status == 403 && path == "/api/v1/farm"), $"{method} {path}: {status} {body}"); // the farm is the operator's
            foreach (var secret in new[] { "alice", "alices-secret", "hunter2", alice.PathHash, aliceToken })
            {
                Assert.False(body.Contains(secret, StringComparison.Ordinal), $"{method} {path} showed Bob '{secret}': {body}");
            }

            if (path.Contains('{', StringComparison.Ordinal))
            {
                Assert.True(status == 404, $"{method} {path}: {status} {body}");
                Assert.Equal("not-found", JsonDocument.Parse(body).RootElement.GetProperty("code").GetString());
            }
        }

        // Nothing was cancelled for Bob, and Bob's DELETE revoked none of Alice's tokens.
        Assert.Empty(Control.Cancelled);
        var tokens = JsonDocument.Parse((await GetAsync("/api/v1/tokens", aliceToken)).Body).RootElement.EnumerateArray().ToList();
        Assert.Contains(tokens, t => t.GetProperty("id").GetInt64() == alice.Token);
        Assert.All(tokens, t => Assert.False(t.GetProperty("revoked").GetBoolean()));
        // Bob's DELETE did not take Alice's pin either.
        Assert.Contains("pin-of-hers", (await GetAsync("/api/v1/pins", aliceToken)).Body, StringComparison.Ordinal);
        // And Alice does see her things.
        Assert.Contains("hunter2", (await GetAsync($"/api/v1/builds/{alice.Build}/log", aliceToken)).Body, StringComparison.Ordinal);
        Assert.Contains(alice.PathHash, (await GetAsync($"/api/v1/paths/{alice.PathHash}", aliceToken)).Body, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_token_without_an_endpoints_permission_is_refused_with_the_permission_named()
    {
        var (alice, _) = await AliceAsync();
        foreach (var (method, path, needs, json) in Endpoints.Where(e => e.Needs != KeyPermissions.None))
        {
            var lacking = await TokenAsync("alice", KeyPermissions.All & ~needs);
            var (status, body, type) = await SendAsync(new HttpMethod(method), Fill(path, alice), lacking, json);
            Assert.True(status == 403, $"{method} {path}: {status} {body}");
            Assert.Equal("application/problem+json", type);
            var problem = JsonDocument.Parse(body).RootElement;
            Assert.Equal("forbidden", problem.GetProperty("code").GetString());
            Assert.Contains(KeyPermissionNames.Format(needs), problem.GetProperty("detail").GetString(), StringComparison.Ordinal);

            var holding = await TokenAsync("alice", needs);
            var (heldStatus, heldBody, _) = await SendAsync(new HttpMethod(method), Fill(path, alice), holding, json);
            if (method == "POST" && path == "/api/v1/keys")
            {
                Assert.True(heldStatus == 400 && heldBody.Contains("proof-required", StringComparison.Ordinal), heldBody);
            }
            else
            {
                Assert.True(heldStatus is >= 200 and <= 299, $"{method} {path}: {heldStatus} {heldBody}");
            }
        }
    }

    [Fact]
    public async Task A_token_grants_at_most_its_own_permissions_and_a_revoked_one_stops_at_the_next_request()
    {
        var writer = await TokenAsync("alice", KeyPermissions.AccountWrite | KeyPermissions.BuildRead);
        var refused = await SendAsync(HttpMethod.Post, "/api/v1/tokens", writer, """{"permissions":["store:write"]}""");
        Assert.Equal(403, refused.Status);
        Assert.Contains("cannot grant store:write", refused.Body, StringComparison.Ordinal);
        Assert.Equal(400, (await SendAsync(HttpMethod.Post, "/api/v1/tokens", writer, """{"permissions":["build:sudo"]}""")).Status);
        Assert.Equal(400, (await SendAsync(HttpMethod.Post, "/api/v1/tokens", writer, """{"permissions":["build:read"],"expires":"yesterday"}""")).Status);
        var malformed = await SendAsync(HttpMethod.Post, "/api/v1/tokens", writer, "{nope");
        Assert.Equal((400, "application/problem+json"), (malformed.Status, malformed.ContentType));
        Assert.Equal("invalid", JsonDocument.Parse(malformed.Body).RootElement.GetProperty("code").GetString());

        var made = await SendAsync(HttpMethod.Post, "/api/v1/tokens", writer, """{"permissions":["build:read"],"expires":"2d","description":"ci"}""");
        Assert.Equal(201, made.Status);
        var answer = JsonDocument.Parse(made.Body).RootElement;
        var secret = answer.GetProperty("token").GetString()!;
        var id = answer.GetProperty("details").GetProperty("id").GetInt64();
        Assert.Equal(["build:read"], answer.GetProperty("details").GetProperty("permissions").EnumerateArray().Select(p => p.GetString()));
        Assert.Equal(200, (await GetAsync("/api/v1/builds", secret)).Status);
        var listed = (await GetAsync("/api/v1/tokens", writer)).Body;
        Assert.Contains("\"ci\"", listed, StringComparison.Ordinal);
        Assert.DoesNotContain(secret, listed, StringComparison.Ordinal);

        Assert.Equal(204, (await SendAsync(HttpMethod.Delete, $"/api/v1/tokens/{id}", writer)).Status);
        Assert.Equal(401, (await GetAsync("/api/v1/builds", secret)).Status);
        Assert.Equal(404, (await SendAsync(HttpMethod.Delete, $"/api/v1/tokens/{id}", writer)).Status);
    }

    [Fact]
    public async Task Without_a_token_no_body_is_read_and_a_description_is_one_line()
    {
        var token = await TokenAsync("alice");
        using (var huge = new HttpRequestMessage(HttpMethod.Post, "/api/v1/tokens") { Content = new StringContent("{nope" + new string('A', 1 << 20)) })
        {
            huge.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
            using var response = await Http.SendAsync(huge, TestContext.Current.CancellationToken);
            Assert.Equal(System.Net.HttpStatusCode.Unauthorized, response.StatusCode); // refused before the body was looked at
        }

        // (The size limit is Kestrel's to enforce: the end-to-end ApiTests send kiln serve a body over it.)
        var (status, body, _) = await SendAsync(HttpMethod.Post, "/api/v1/tokens", token, """{"permissions":["build:read"],"description":"two\nlines"}""");
        Assert.True(status == 400, body);
        Assert.Contains("one line", body, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_token_made_by_a_token_expires_with_it_and_a_narrow_token_cannot_revoke_a_stronger_one()
    {
        var expires = DateTimeOffset.UtcNow.AddHours(1);
        var parent = await TokenAsync("alice", KeyPermissions.AccountWrite | KeyPermissions.BuildRead, expires);
        var made = await SendAsync(HttpMethod.Post, "/api/v1/tokens", parent, """{"permissions":["build:read"]}"""); // asks for "never"
        Assert.Equal(201, made.Status);
        var child = JsonDocument.Parse(made.Body).RootElement.GetProperty("details");
        Assert.Equal(Documents(expires), child.GetProperty("expires").GetString());

        var strong = await TokenAsync("alice");
        var strongId = JsonDocument.Parse((await GetAsync("/api/v1/me", strong)).Body).RootElement.GetProperty("token").GetProperty("id").GetInt64();
        var refused = await SendAsync(HttpMethod.Delete, $"/api/v1/tokens/{strongId}", parent);
        Assert.Equal(403, refused.Status);
        Assert.Equal(200, (await GetAsync("/api/v1/me", strong)).Status);
        Assert.Equal(204, (await SendAsync(HttpMethod.Delete, $"/api/v1/tokens/{child.GetProperty("id").GetInt64()}", parent)).Status); // no stronger than it
        static string Documents(DateTimeOffset time) => time.ToString("yyyy-MM-ddTHH:mm:ssZ", System.Globalization.CultureInfo.InvariantCulture);
    }

    private sealed record Alice(long Build, long Running, string PathHash, long Token, string Key);

    // Alice's build (with a secret in its log), path and token: what Bob must never see.
    private async Task<(Alice Alice, string Token)> AliceAsync()
    {
        var build = await BuildAsync("alice", "alices-secret", log: ["the password is hunter2"]);
        var running = await BuildAsync("alice", "alices-running", running: true);
        var path = await PathAsync("alice", "alices-secret", "hunter2");
        using (var view = await Store.OpenViewAsync("alice", default))
        {
            await view.PinAsync(path, "pin-of-hers", default);
        }

        var token = await TokenAsync("alice");
        // The token the table revokes: one that any token with account:write may revoke.
        var revocable = await TokenAsync("alice", KeyPermissions.AccountWrite);
        var id = JsonDocument.Parse((await GetAsync("/api/v1/me", revocable)).Body).RootElement.GetProperty("token").GetProperty("id").GetInt64();
        // A login key of hers with account:write only (so a token with just that may remove it).
        using var keys = new global::Kiln.Nix.Tests.Support.TempDir();
        Assert.Equal(0, global::Kiln.Nix.Tests.Support.Processes.Run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "alices-secret-key", "-f", keys["key"]]).ExitCode);
        var key = global::Kiln.Store.Accounts.SshPublicKey.Parse(File.ReadAllText(keys["key"] + ".pub").Trim());
        var aliceRecord = new global::Kiln.Store.Metadata.AccountRecord(await Store.Accounts.GetOrCreateAccountAsync("alice", default), "alice");
        await Accounts.AddKeyAsync(global::Kiln.Accounts.Actor.Operator, aliceRecord, key, KeyPermissions.AccountWrite, null, default);
        return (new Alice(build, running, path.HashPart, id, key.Fingerprint), token);
    }

    private static string Fill(string path, Alice alice) => path
        .Replace("{build}", alice.Build.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)
        .Replace("{running}", alice.Running.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)
        .Replace("{path}", alice.PathHash, StringComparison.Ordinal)
        .Replace("{key}", Uri.EscapeDataString(alice.Key), StringComparison.Ordinal)
        .Replace("{token}", alice.Token.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
}
