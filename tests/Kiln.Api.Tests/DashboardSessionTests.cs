using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using Kiln.Store.Accounts;

namespace Kiln.Api.Tests;

/// <summary>
/// The dashboard's browser session, attacked as another site would: the login cookie is HttpOnly and SameSite=Strict;
/// with it the API reads, but changes nothing without the session's CSRF token, and nothing at all from another
/// origin; login and logout refuse other sites too. Pages show only what the visitor's token may see, and text from
/// the store is data, never markup. (The real browser's view is the end-to-end DashboardTests.)
/// </summary>
public sealed partial class DashboardSessionTests : ApiFixture
{
    [Fact]
    public async Task Login_sets_an_HttpOnly_SameSite_Strict_cookie_and_refuses_bad_tokens_and_other_sites()
    {
        var token = await TokenAsync("alice");
        using (var bad = await LoginAsync("kiln_" + new string('0', 48)))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, bad.StatusCode);
            Assert.False(bad.Headers.Contains("Set-Cookie"));
        }

        foreach (var (header, value) in new[] { ("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site") })
        {
            using var forged = await LoginAsync(token, (header, value));
            Assert.Equal(HttpStatusCode.Forbidden, forged.StatusCode);
            Assert.False(forged.Headers.Contains("Set-Cookie"), $"a login from {value} set a cookie");
        }

        using var good = await LoginAsync(token, ("Origin", "http://localhost"));
        Assert.Equal(HttpStatusCode.Redirect, good.StatusCode);
        var cookie = Assert.Single(good.Headers.GetValues("Set-Cookie"));
        Assert.StartsWith(BrowserSessions.CookieName + "=" + token + ";", cookie, StringComparison.Ordinal);
        Assert.Contains("httponly", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("path=/", cookie, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task Through_the_cookie_the_API_reads_but_changes_nothing_without_the_sessions_CSRF_token_or_from_another_site()
    {
        var token = await TokenAsync("alice");
        var running = await BuildAsync("alice", "alices-running", running: true);
        var csrf = await CsrfAsync(token);
        Assert.Equal(HttpStatusCode.OK, (await CookieSendAsync(HttpMethod.Get, "/api/v1/me", token, null)).Status);

        var changes = new (HttpMethod Method, string Path, string? Body)[]
        {
            (HttpMethod.Post, "/api/v1/tokens", """{"permissions":["build:read"],"description":"forged"}"""),
            (HttpMethod.Delete, "/api/v1/tokens/1", null),
            (HttpMethod.Post, $"/api/v1/builds/{running}/cancel", null),
            (HttpMethod.Post, "/api/v1/signing-key", "{}"),
        };
        foreach (var (method, path, body) in changes)
        {
            foreach (var (headers, why) in new[]
            {
                (Array.Empty<(string, string)>(), "no CSRF token"),
                ([(BrowserSessions.CsrfHeader, new string('0', 64))], "a wrong CSRF token"),
                ([(BrowserSessions.CsrfHeader, csrf), ("Origin", "https://evil.example")], "another origin"),
                ([(BrowserSessions.CsrfHeader, csrf), ("Sec-Fetch-Site", "cross-site")], "another site"),
            })
            {
                var (status, answer) = await CookieSendAsync(method, path, token, body, headers);
                Assert.True(status == HttpStatusCode.Forbidden, $"{method} {path} with {why}: {status} {answer}");
                Assert.Equal("csrf", JsonDocument.Parse(answer).RootElement.GetProperty("code").GetString());
            }
        }

        // Nothing happened: no token made, none revoked, nothing cancelled.
        Assert.DoesNotContain("forged", (await GetAsync("/api/v1/tokens", token)).Body, StringComparison.Ordinal);
        Assert.Equal(200, (await GetAsync("/api/v1/me", token)).Status);
        Assert.Empty(Control.Cancelled);

        // With the page's CSRF token, from this site, it works.
        var (made, madeBody) = await CookieSendAsync(HttpMethod.Post, "/api/v1/tokens", token, """{"permissions":["build:read"],"description":"from the page"}""",
            [(BrowserSessions.CsrfHeader, csrf), ("Origin", "http://localhost"), ("Sec-Fetch-Site", "same-origin")]);
        Assert.True(made == HttpStatusCode.Created, madeBody);
        Assert.Equal(HttpStatusCode.Accepted, (await CookieSendAsync(HttpMethod.Post, $"/api/v1/builds/{running}/cancel", token, null, [(BrowserSessions.CsrfHeader, csrf)])).Status);

        // Another session's CSRF token is not this one's.
        var other = await CsrfAsync(await TokenAsync("alice"));
        Assert.NotEqual(csrf, other);
        Assert.Equal(HttpStatusCode.Forbidden, (await CookieSendAsync(HttpMethod.Post, "/api/v1/tokens", token, """{"permissions":["build:read"]}""", [(BrowserSessions.CsrfHeader, other)])).Status);
    }

    [Fact]
    public void Over_HTTPS_the_cookie_is_Secure_and_host_only_and_the_public_URLs_origin_is_this_site()
    {
        var sessions = new BrowserSessions(Store, new Uri("https://kiln.example.com"));
        var context = new Microsoft.AspNetCore.Http.DefaultHttpContext();
        context.Request.Scheme = "http"; // a reverse proxy ended TLS
        context.Request.Host = new("127.0.0.1:8080");
        sessions.Start(context.Response, "kiln_secret");
        var cookie = context.Response.Headers.SetCookie.ToString();
        Assert.StartsWith(BrowserSessions.SecureCookieName + "=kiln_secret;", cookie, StringComparison.Ordinal);
        Assert.Contains("secure", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("domain", cookie, StringComparison.OrdinalIgnoreCase);

        // The plain name is not read over HTTPS: a cookie planted by a sibling subdomain would carry it.
        context.Request.Headers.Cookie = $"{BrowserSessions.CookieName}=kiln_planted";
        Assert.Null(sessions.TokenOf(context.Request));
        context.Request.Headers.Cookie = $"{BrowserSessions.SecureCookieName}=kiln_secret";
        Assert.Equal("kiln_secret", sessions.TokenOf(context.Request));

        foreach (var (origin, site, cross) in new[]
        {
            ("https://kiln.example.com", "", false), ("http://127.0.0.1:8080", "", false), ("https://evil.example.com", "", true),
            ("https://kiln.example.com", "same-site", true), ("", "same-origin", false), ("", "cross-site", true), ("", "", false),
        })
        {
            context.Request.Headers.Origin = origin;
            context.Request.Headers["Sec-Fetch-Site"] = site;
            Assert.True(cross == sessions.CrossSite(context.Request), $"Origin '{origin}', Sec-Fetch-Site '{site}'");
        }
    }

    [Fact]
    public async Task Only_the_operator_grants_server_read_not_a_token_holding_it()
    {
        var holder = await TokenAsync("alice", KeyPermissions.ServerRead | KeyPermissions.AccountWrite | KeyPermissions.BuildRead);
        var refused = await SendAsync(HttpMethod.Post, "/api/v1/tokens", holder, """{"permissions":["server:read"]}""");
        Assert.True(refused.Status == 403, refused.Body);
        Assert.Contains("only the operator grants server:read", refused.Body, StringComparison.Ordinal);
        Assert.Equal(201, (await SendAsync(HttpMethod.Post, "/api/v1/tokens", holder, """{"permissions":["build:read"]}""")).Status);
        Assert.DoesNotContain("value=\"server:read\"", await PageTextAsync("/ui/account", holder), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Logout_needs_the_CSRF_token_and_a_revoked_tokens_session_ends()
    {
        var token = await TokenAsync("alice");
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/ui/logout") { Content = new FormUrlEncodedContent([]) })
        {
            request.Headers.Add("Sec-Fetch-Site", "cross-site"); // another site's form: no cookie comes, but none may be deleted either
            using var crossSite = await Http.SendAsync(request, TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.Forbidden, crossSite.StatusCode);
            Assert.False(crossSite.Headers.Contains("Set-Cookie"));
        }

        using (var forged = await PageAsync(HttpMethod.Post, "/ui/logout", token, new FormUrlEncodedContent([])))
        {
            Assert.Equal(HttpStatusCode.Forbidden, forged.StatusCode);
            Assert.False(forged.Headers.Contains("Set-Cookie"));
        }

        using (var logout = await PageAsync(HttpMethod.Post, "/ui/logout", token, new FormUrlEncodedContent([new(BrowserSessions.CsrfField, await CsrfAsync(token))])))
        {
            Assert.Equal(HttpStatusCode.Redirect, logout.StatusCode);
            Assert.Contains("expires=Thu, 01 Jan 1970", Assert.Single(logout.Headers.GetValues("Set-Cookie")), StringComparison.Ordinal);
        }

        var id = JsonDocument.Parse((await GetAsync("/api/v1/me", token)).Body).RootElement.GetProperty("token").GetProperty("id").GetInt64();
        Assert.Equal(204, (await SendAsync(HttpMethod.Delete, $"/api/v1/tokens/{id}", token)).Status);
        using var after = await PageAsync(HttpMethod.Get, "/ui/queue", token);
        Assert.Equal(HttpStatusCode.Redirect, after.StatusCode);
        Assert.Equal("/ui/login", after.Headers.Location?.ToString());
        using var anonymous = await PageAsync(HttpMethod.Get, "/ui/builds", null);
        Assert.Equal("/ui/login", anonymous.Headers.Location?.ToString());
    }

    [Fact]
    public async Task Pages_show_only_what_the_visitors_token_may_see()
    {
        var alices = await BuildAsync("alice", "alices-secret", log: ["the password is hunter2"]);
        var bob = await TokenAsync("bob");
        await BuildAsync("bob", "bobs-own");
        var alice = await TokenAsync("alice");
        var aliceHistory = await PageTextAsync("/ui/builds", alice);
        Assert.Contains("alices-secret", aliceHistory, StringComparison.Ordinal);
        Assert.DoesNotContain("bobs-own", aliceHistory, StringComparison.Ordinal);
        Assert.Contains("alices-secret", await PageTextAsync($"/ui/builds/{alices}", alice), StringComparison.Ordinal);

        var bobHistory = await PageTextAsync("/ui/builds", bob);
        Assert.Contains("bobs-own", bobHistory, StringComparison.Ordinal);
        Assert.DoesNotContain("alices-secret", bobHistory, StringComparison.Ordinal);
        foreach (var page in new[] { $"/ui/builds/{alices}", "/ui/farm" })
        {
            using var refused = await PageAsync(HttpMethod.Get, page, bob);
            var text = await refused.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
            Assert.True(refused.StatusCode == HttpStatusCode.NotFound, $"{page}: {refused.StatusCode}");
            Assert.DoesNotContain("alices-secret", text, StringComparison.Ordinal);
            Assert.DoesNotContain("Farm</a>", text, StringComparison.Ordinal);
        }

        // Only a token the operator gave server:read sees the farm (the page, its link, and what its script reads).
        var operatorToken = await TokenAsync("alice", KeyPermissions.BuildRead | KeyPermissions.ServerRead);
        Assert.Contains("Farm</a>", await PageTextAsync("/ui/farm", operatorToken), StringComparison.Ordinal);
        Assert.Contains("embedded", (await GetAsync("/api/v1/farm", operatorToken)).Body, StringComparison.Ordinal);
        var refusal = await SendAsync(HttpMethod.Post, "/api/v1/tokens", alice, """{"permissions":["server:read"]}""");
        Assert.True(refusal.Status == 403, refusal.Body); // an account's own token cannot make one

        // A token without build:read gets pages that say so, not data.
        var keysOnly = await TokenAsync("alice", KeyPermissions.AccountWrite);
        Assert.Contains("lacks the build:read permission", await PageTextAsync("/ui/builds", keysOnly), StringComparison.Ordinal);
        using var build = await PageAsync(HttpMethod.Get, $"/ui/builds/{alices}", keysOnly);
        Assert.Equal(HttpStatusCode.Forbidden, build.StatusCode);
    }

    [Fact]
    public async Task Text_from_the_store_is_encoded_and_pages_forbid_inline_script()
    {
        const string Attack = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'";
        var token = await TokenAsync("alice");
        var failed = await BuildAsync("alice", "hostile", succeeded: false, error: Attack);
        Assert.Equal(201, (await SendAsync(HttpMethod.Post, "/api/v1/tokens", token, JsonSerializer.Serialize(new { permissions = new[] { "build:read" }, description = Attack }))).Status);
        foreach (var page in new[] { $"/ui/builds/{failed}", "/ui/account" })
        {
            using var response = await PageAsync(HttpMethod.Get, page, token);
            var html = await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
            Assert.True(response.StatusCode == HttpStatusCode.OK, page);
            Assert.DoesNotContain("<script>alert", html, StringComparison.Ordinal);
            Assert.DoesNotContain("<img src=x", html, StringComparison.Ordinal);
            Assert.Contains("&lt;script&gt;alert(1)&lt;/script&gt;", html, StringComparison.Ordinal);
            var policy = response.Headers.GetValues("Content-Security-Policy").Single();
            Assert.Contains("script-src 'self'", policy, StringComparison.Ordinal);
            Assert.DoesNotContain("unsafe-inline", policy, StringComparison.Ordinal);
            Assert.Equal("no-store", response.Headers.CacheControl?.ToString());
            Assert.Equal("nosniff", response.Headers.GetValues("X-Content-Type-Options").Single());
            Assert.Equal("DENY", response.Headers.GetValues("X-Frame-Options").Single());
        }

        // The history's filters are echoed encoded, and a name with LIKE's wildcards finds nothing it should not.
        var history = await PageTextAsync("/ui/builds?name=%22%3E%3Cscript%3E&tag=x%3D%3Cb%3E", token);
        Assert.DoesNotContain("\"><script>", history, StringComparison.Ordinal);
        Assert.DoesNotContain("hostile", await PageTextAsync("/ui/builds?name=%25", token), StringComparison.Ordinal);
    }

    private async Task<HttpResponseMessage> LoginAsync(string token, params (string Name, string Value)[] headers)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/ui/login") { Content = new FormUrlEncodedContent([new("token", token)]) };
        foreach (var (name, value) in headers)
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }

        return await Http.SendAsync(request, TestContext.Current.CancellationToken);
    }

    private async Task<HttpResponseMessage> PageAsync(HttpMethod method, string path, string? token, HttpContent? content = null)
    {
        using var request = new HttpRequestMessage(method, path) { Content = content };
        if (token is not null)
        {
            request.Headers.Add("Cookie", $"{BrowserSessions.CookieName}={token}");
        }

        return await Http.SendAsync(request, TestContext.Current.CancellationToken);
    }

    private async Task<string> PageTextAsync(string path, string token)
    {
        using var response = await PageAsync(HttpMethod.Get, path, token);
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"{path}: {response.StatusCode}");
        return await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
    }

    // The CSRF token a page gives its script (in its meta element).
    private async Task<string> CsrfAsync(string token) => CsrfMeta().Match(await PageTextAsync("/ui/queue", token)).Groups[1].Value;

    [GeneratedRegex("<meta name=\"kiln-csrf\" content=\"([0-9a-f]{64})\">")]
    private static partial Regex CsrfMeta();

    private async Task<(HttpStatusCode Status, string Body)> CookieSendAsync(HttpMethod method, string path, string token, string? json,
        (string Name, string Value)[]? headers = null)
    {
        using var request = new HttpRequestMessage(method, path);
        request.Headers.Add("Cookie", $"{BrowserSessions.CookieName}={token}");
        foreach (var (name, value) in headers ?? [])
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }

        if (json is not null)
        {
            request.Content = new StringContent(json, System.Text.Encoding.UTF8, "application/json");
        }

        using var response = await Http.SendAsync(request, TestContext.Current.CancellationToken);
        return (response.StatusCode, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken));
    }
}
