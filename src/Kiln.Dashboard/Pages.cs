using System.Globalization;
using System.Text;
using Kiln.Accounts;
using Kiln.Api;
using Kiln.Protocol;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using static Kiln.Dashboard.Html;

namespace Kiln.Dashboard;

/// <summary>
/// The dashboard's pages. Each reads through the visitor's token exactly as the API does (its <see cref="StoreView"/>,
/// <see cref="AccountService"/>'s rules), so a page shows only what that token may see; the live parts are filled by
/// <c>app.js</c> from the API.
/// </summary>
internal sealed class Pages(KilnStore store, AccountService accounts, BrowserSessions sessions)
{
    private const int PageSize = 50;

    public void Map(RouteGroupBuilder ui)
    {
        // Handlers taking only the HttpContext are passed as Delegate, so their IResult is written (not dropped as a
        // RequestDelegate's would be).
        void Get(string path, Func<HttpContext, Task<IResult>> handler) => ui.MapGet(path, (Delegate)handler);
        Get("/", async context =>
            await VisitorAsync(context).ConfigureAwait(false) is null ? Results.Redirect(KilnDashboard.Prefix + "/login") : Results.Redirect(KilnDashboard.Prefix + "/queue"));
        Get("/login", context => Task.FromResult(Login(context, null, StatusCodes.Status200OK)));
        ui.MapPost("/login", (Delegate)LoginAsync).DisableAntiforgery();
        ui.MapPost("/logout", (Delegate)LogoutAsync).DisableAntiforgery();
        Get("/queue", context => Authenticated(context, "Queue", (visitor, _) => Task.FromResult(Queue(visitor))));
        Get("/builds", context => Authenticated(context, "Builds", BuildsAsync));
        ui.MapGet("/builds/{id:long}", (HttpContext context, long id) => Authenticated(context, "Builds", (visitor, c) => BuildAsync(visitor, id, c)));
        Get("/usage", context => Authenticated(context, "Usage", UsageAsync));
        Get("/account", context => Authenticated(context, "Account", AccountAsync));
        Get("/farm", context => Authenticated(context, "Farm", (visitor, _) => Task.FromResult(Farm(visitor))));
    }

    private async Task<Visitor?> VisitorAsync(HttpContext context)
    {
        var token = sessions.TokenOf(context.Request);
        return await ApiCaller.FindAsync(store, token, context.RequestAborted).ConfigureAwait(false) is { } caller
            ? new Visitor(caller, await sessions.CsrfTokenAsync(token!).ConfigureAwait(false))
            : null;
    }

    // A page for a logged-in visitor: without a valid session, the login page (its token may have been revoked since);
    // Kiln's refusals (a build that is not theirs, a permission the token lacks) as a page with their status.
    private async Task<IResult> Authenticated(HttpContext context, string section, Func<Visitor, HttpContext, Task<(string Title, string Body)>> page)
    {
        context.Response.Headers.CacheControl = "no-store";
        if (await VisitorAsync(context).ConfigureAwait(false) is not { } visitor)
        {
            return Results.Redirect(KilnDashboard.Prefix + "/login");
        }

        try
        {
            var (title, body) = await page(visitor, context).ConfigureAwait(false);
            return Results.Content(Page(title, section, visitor, body), "text/html; charset=utf-8");
        }
        catch (KilnException e)
        {
            var status = e.Kind switch
            {
                ErrorKind.NotFound => StatusCodes.Status404NotFound,
                ErrorKind.Forbidden => StatusCodes.Status403Forbidden,
                _ => StatusCodes.Status400BadRequest,
            };
            var title = status switch { 404 => "Not found", 403 => "Not allowed", _ => "Not understood" };
            return Results.Content(Page(title, section, visitor, $"<h1>{title}</h1><p class=\"error\" role=\"alert\">{E(e.Message)}</p>"),
                "text/html; charset=utf-8", statusCode: status);
        }
    }

    private static IResult Login(HttpContext context, string? error, int status)
    {
        context.Response.Headers.CacheControl = "no-store";
        var body = $"""
            <section class="login card">
            <h1>Log in to Kiln</h1>
            <p>Use a token of your account. Make one with <code>ssh kiln@HOST token create --permissions build:read,build:write,account:write</code>
            (or ask your operator for <code>kiln token create ACCOUNT</code>).</p>
            {(error is null ? "" : $"<p class=\"error\" role=\"alert\" id=\"login-error\">{E(error)}</p>")}
            <form method="post" action="{KilnDashboard.Prefix}/login">
            <label for="token">Token</label>
            <input id="token" name="token" type="password" autocomplete="off" required spellcheck="false"{(error is null ? "" : " aria-describedby=\"login-error\"")}>
            <button type="submit">Log in</button>
            </form>
            <p class="hint">The token stays in this browser in a cookie its pages' scripts cannot read; logging out forgets it.</p>
            </section>
            """;
        return Results.Content(Page("Log in", "", null, body), "text/html; charset=utf-8", statusCode: status);
    }

    private async Task<IResult> LoginAsync(HttpContext context)
    {
        // Another site's page must not log its visitor in either (they would then act as the attacker's account).
        if (sessions.CrossSite(context.Request) || !context.Request.HasFormContentType)
        {
            return Login(context, "That login did not come from this page.", StatusCodes.Status403Forbidden);
        }

        var form = await context.Request.ReadFormAsync(context.RequestAborted).ConfigureAwait(false);
        var token = form["token"].ToString().Trim();
        if (await ApiCaller.FindAsync(store, token, context.RequestAborted).ConfigureAwait(false) is null)
        {
            return Login(context, "That token is not valid: mistyped, revoked or expired.", StatusCodes.Status401Unauthorized);
        }

        sessions.Start(context.Response, token);
        return Results.Redirect(KilnDashboard.Prefix + "/queue");
    }

    private async Task<IResult> LogoutAsync(HttpContext context)
    {
        // Another site cannot log a visitor out either (it would not send the cookie, but the answer would delete it).
        var token = sessions.TokenOf(context.Request);
        var form = context.Request.HasFormContentType ? await context.Request.ReadFormAsync(context.RequestAborted).ConfigureAwait(false) : null;
        if (sessions.CrossSite(context.Request) || (token is not null && !await sessions.ValidCsrfAsync(token, form?[BrowserSessions.CsrfField].ToString()).ConfigureAwait(false)))
        {
            return Results.Content(Page("Not allowed", "", null, "<h1>Not allowed</h1><p class=\"error\" role=\"alert\">That request did not come from this dashboard.</p>"),
                "text/html; charset=utf-8", statusCode: StatusCodes.Status403Forbidden);
        }

        sessions.End(context.Response);
        return Results.Redirect(KilnDashboard.Prefix + "/login");
    }

    private static string NeedsNotice(Visitor visitor, KeyPermissions permission, string what) =>
        visitor.Can(permission) ? "" : $"<p class=\"notice\" role=\"status\">This token cannot {E(what)}: it lacks the {E(KeyPermissionNames.Format(permission))} permission.</p>";

    // The live queue: app.js fills both tables from /api/v1/queue and /api/v1/builds and refreshes them every two seconds.
    private static (string, string) Queue(Visitor visitor) => ("Queue", $"""
        <h1>Queue</h1>
        {NeedsNotice(visitor, KeyPermissions.BuildRead, "see builds")}
        <section aria-labelledby="queue-h" data-live="queue"{(visitor.Can(KeyPermissions.BuildWrite) ? " data-can-cancel=\"1\"" : "")}>
        <h2 id="queue-h">In the queue now</h2>
        <p class="summary" id="queue-summary" aria-live="polite">Loading…</p>
        {Table("queue-table", "Your builds running or waiting", ["Derivation", "State", "Place in line", "Agent"], [], "Nothing of yours is running or waiting.")}
        </section>
        <section aria-labelledby="recent-h" data-live="recent">
        <h2 id="recent-h">Recent builds</h2>
        {Table("recent-table", "Your most recent builds", BuildHeaders, [], "No builds yet.")}
        <p><a href="{KilnDashboard.Prefix}/builds">All builds →</a></p>
        </section>
        <noscript><p class="notice">This page updates itself with JavaScript; the <a href="{KilnDashboard.Prefix}/builds">build history</a> works without.</p></noscript>
        """);

    private async Task<(string, string)> BuildsAsync(Visitor visitor, HttpContext context)
    {
        var request = context.Request.Query;
        string? Text(string name) => request[name].ToString() is { Length: > 0 } value ? value : null;
        var (status, tag, since, until, name, cursor) = (Text("status"), Text("tag"), Text("since"), Text("until"), Text("name"), Text("cursor"));
        var body = new StringBuilder("<h1>Builds</h1>");
        body.Append(CultureInfo.InvariantCulture, $"""
            <form class="filters" method="get" action="{KilnDashboard.Prefix}/builds" role="search" aria-label="Filter builds">
            <div><label for="f-status">Status</label><select id="f-status" name="status">
            {string.Concat(new[] { ("", "any"), ("running", "running"), ("built", "built"), ("failed", "failed") }.Select(o => $"<option value=\"{o.Item1}\"{(o.Item1 == (status ?? "") ? " selected" : "")}>{o.Item2}</option>"))}
            </select></div>
            <div><label for="f-name">Derivation name</label><input id="f-name" name="name" value="{E(name)}" placeholder="hello"></div>
            <div><label for="f-tag">Tag</label><input id="f-tag" name="tag" value="{E(tag)}" placeholder="ci-run=123"></div>
            <div><label for="f-since">From</label><input id="f-since" name="since" type="date" value="{E(since)}"></div>
            <div><label for="f-until">To</label><input id="f-until" name="until" type="date" value="{E(until)}"></div>
            <div class="actions"><button type="submit">Filter</button> <a href="{KilnDashboard.Prefix}/builds">Clear</a></div>
            </form>
            """);
        if (!visitor.Can(KeyPermissions.BuildRead))
        {
            return ("Builds", body.Append(NeedsNotice(visitor, KeyPermissions.BuildRead, "see builds")).ToString());
        }

        BuildQuery query;
        try
        {
            // A date in "To" means up to the end of that day.
            var untilText = until is { Length: 10 } && DateOnly.TryParseExact(until, "yyyy-MM-dd", CultureInfo.InvariantCulture, DateTimeStyles.None, out var day)
                ? day.AddDays(1).ToString("yyyy-MM-dd", CultureInfo.InvariantCulture) : until;
            query = BuildFilters.Parse(status, tag, since, untilText) with
            {
                Limit = PageSize,
                NameContains = name is { Length: <= 200 } && !name.Any(char.IsControl) ? name : null,
                Before = cursor is null ? null : long.TryParse(cursor, NumberStyles.None, CultureInfo.InvariantCulture, out var before) ? before : null,
            };
        }
        catch (KilnException e)
        {
            return ("Builds", body.Append(CultureInfo.InvariantCulture, $"<p class=\"error\" role=\"alert\">{E(e.Message)}</p>").ToString());
        }

        using var view = store.OpenView(visitor.Caller.Caller);
        var builds = await view.ListBuildsAsync(query, context.RequestAborted).ConfigureAwait(false);
        body.Append(Table("builds-table", "Builds, newest first", BuildHeaders, builds.Select(b => BuildRow(BuildDocument.Of(b, view.AccountId))), "No builds match."));
        if (builds.Count == PageSize)
        {
            var next = new StringBuilder($"{KilnDashboard.Prefix}/builds?cursor={builds[^1].Id}");
            foreach (var (key, value) in new[] { ("status", status), ("name", name), ("tag", tag), ("since", since), ("until", until) })
            {
                if (value is not null)
                {
                    next.Append(CultureInfo.InvariantCulture, $"&{key}={Q(value)}");
                }
            }

            body.Append(CultureInfo.InvariantCulture, $"<p class=\"pager\"><a href=\"{E(next.ToString())}\" rel=\"next\">Older builds →</a></p>");
        }

        return ("Builds", body.ToString());
    }

    private async Task<(string, string)> BuildAsync(Visitor visitor, long id, HttpContext context)
    {
        var record = await visitor.Caller.VisibleBuildAsync(store, id, KeyPermissions.BuildRead, context.RequestAborted).ConfigureAwait(false);
        var build = BuildDocument.Of(record, visitor.Caller.Caller.AccountId);
        var tags = await store.Builds.GetBuildTagsAsync(id, visitor.Caller.Account.Id, context.RequestAborted).ConfigureAwait(false);
        var name = DrvName(build.Derivation);
        var rows = new List<(string, string)>
        {
            ("Status", $"<span id=\"build-status\">{Badge(build.Status)}</span>{(build.Failure.Length > 0 ? $" {E(build.Failure)}" : "")}"),
            ("Derivation", $"<code class=\"path\">{E(build.Derivation)}</code>"),
            ("Started (UTC)", E(When(build.Started))),
            ("Took", build.Stopped is null ? "running" : Duration(build.Seconds)),
            ("CPU", $"{F(build.CpuUserSeconds, "0.0")} s user, {F(build.CpuSystemSeconds, "0.0")} s system"),
            ("Peak memory", build.PeakMemory is { } memory ? Bytes(memory) : "—"),
            ("Agent", build.Agent.Length > 0 ? E(build.Agent) : "—"),
            ("Attempts", build.Stopped is null ? "—" : build.Retries == 0 ? "1" : $"{build.Attempts} (retried {build.Retries}×: an agent was lost or memory ran out)"),
            ("Relation", build.Relation == "started" ? "your account started it" : "shared: it was for your account too (joined or reused)"),
            ("Tags", tags.Count == 0 ? "—" : string.Join(" ", tags.Select(t => $"<span class=\"tag\">{E(t.ToString())}</span>"))),
            ("Outputs", build.Outputs.Count == 0 ? "—" : string.Join("<br>", build.Outputs.Select(o => $"{E(o.Name)}: <code class=\"path\">{E(o.Path)}</code>"))),
        };
        if (build.Error.Length > 0)
        {
            rows.Insert(1, ("Error", $"<span class=\"error-text\">{E(build.Error)}</span>"));
        }

        var cancel = build.Status == "running" && visitor.Can(KeyPermissions.BuildWrite)
            ? $"<button type=\"button\" id=\"cancel-build\" data-build=\"{id}\" class=\"danger\">Cancel this build</button> <span id=\"cancel-result\" role=\"status\"></span>"
            : "";
        var body = $"""
            <h1 class="build-title">{E(name)} <span class="muted">#{id}</span></h1>
            <dl class="facts">{string.Concat(rows.Select(r => $"<dt>{r.Item1}</dt><dd>{r.Item2}</dd>"))}</dl>
            {cancel}
            <section aria-labelledby="log-h" class="log-section">
            <div class="log-bar"><h2 id="log-h">Log</h2>
            <label class="check"><input type="checkbox" id="log-follow" checked> Follow the end</label>
            <a href="{KilnApi.Prefix}/builds/{id}/log" download="build-{id}.log">Whole log (text)</a></div>
            <p class="notice" id="log-hidden" hidden></p>
            <div id="log" class="log" data-build="{id}" tabindex="0" role="log" aria-label="Build log"></div>
            <p class="muted" id="log-state" role="status">Loading the log…</p>
            </section>
            """;
        return ($"{name} #{id}", body);
    }

    private async Task<(string, string)> UsageAsync(Visitor visitor, HttpContext context)
    {
        visitor.Caller.Need(KeyPermissions.BuildRead);
        var byMonth = context.Request.Query["by"] == "month";
        var today = DateOnly.FromDateTime(DateTime.UtcNow);
        var first = byMonth ? new DateOnly(today.Year, today.Month, 1).AddMonths(-11) : today.AddDays(-29);
        using var view = store.OpenView(visitor.Caller.Caller);
        var usage = await UsageReports.ReportAsync(view, new BuildQuery { Since = new DateTimeOffset(first.ToDateTime(TimeOnly.MinValue), TimeSpan.Zero).ToUnixTimeSeconds() },
            byMonth, context.RequestAborted).ConfigureAwait(false);
        // Every period in the span, the empty ones too, so the chart's axis is time.
        var known = usage.Periods.ToDictionary(p => p.Start, StringComparer.Ordinal);
        var periods = new List<UsagePeriod>();
        for (var day = first; day <= today; day = byMonth ? day.AddMonths(1) : day.AddDays(1))
        {
            var key = day.ToString(byMonth ? "yyyy-MM" : "yyyy-MM-dd", CultureInfo.InvariantCulture);
            periods.Add(known.GetValueOrDefault(key) ?? new UsagePeriod(key, 0, 0, 0, 0));
        }

        var unit = byMonth ? "month" : "day";
        var body = new StringBuilder($"""
            <h1>Usage</h1>
            <p class="switch">Per <a href="{KilnDashboard.Prefix}/usage"{(byMonth ? "" : " aria-current=\"true\"")}>day (30 days)</a> ·
            <a href="{KilnDashboard.Prefix}/usage?by=month"{(byMonth ? " aria-current=\"true\"" : "")}>month (12 months)</a></p>
            <div class="cards">
            <div class="card stat"><span class="label">Builds started</span><span class="value">{N(periods.Sum(p => p.Builds))}</span></div>
            <div class="card stat"><span class="label">CPU hours</span><span class="value">{F(periods.Sum(p => p.CpuHours), "0.00")}</span></div>
            <div class="card stat"><span class="label">Build hours</span><span class="value">{F(periods.Sum(p => p.WallHours), "0.00")}</span></div>
            <div class="card stat"><span class="label">Storage</span><span class="value">{Bytes(usage.Storage.NarBytes)}</span><span class="label">{N(usage.Storage.Paths)} paths</span></div>
            <div class="card stat"><span class="label">Uploaded</span><span class="value">{Bytes(periods.Sum(p => p.UploadedBytes))}</span><span class="label">downloaded {Bytes(periods.Sum(p => p.DownloadedBytes))}</span></div>
            </div>
            <p class="hint">Storage counts every path your account holds, content other accounts hold too included. Builds your account joined or reused cost it nothing and are not counted.</p>
            """);
        body.Append(Charts.Bars("cpu-chart", $"CPU hours per {unit}", periods.Select(p => (p.Start, p.CpuHours)).ToList(), "0.##"));
        body.Append(Charts.Bars("builds-chart", $"Builds started per {unit}", periods.Select(p => (p.Start, (double)p.Builds)).ToList(), "0"));
        // Storage at the end of each period (the last hourly sample; no bar where no server ran to take one).
        var stored = usage.StorageHistory.ToDictionary(s => s.Start, s => s.NarBytes, StringComparer.Ordinal);
        var (scale, scaleName) = stored.Values.DefaultIfEmpty(0).Max() >= 1L << 30 ? (1L << 30, "GiB") : (1L << 20, "MiB");
        body.Append(Charts.Bars("storage-chart", $"Storage at the end of each {unit} ({scaleName})",
            periods.Select(p => (p.Start, stored.TryGetValue(p.Start, out var bytes) ? bytes / (double)scale : 0)).ToList(), "0.##"));
        body.Append(Table("usage-table", $"Usage per {unit}", [byMonth ? "Month" : "Day", "Builds", "Succeeded", "CPU hours", "Build hours", "Uploaded", "Downloaded"],
            periods.Where(p => p.Builds > 0 || p.UploadedBytes > 0 || p.DownloadedBytes > 0).Reverse().Select(p =>
                $"<tr><td>{E(p.Start)}</td><td>{N(p.Builds)}</td><td>{N(p.Succeeded)}</td><td>{F(p.CpuHours, "0.####")}</td><td>{F(p.WallHours, "0.####")}</td><td>{Bytes(p.UploadedBytes)}</td><td>{Bytes(p.DownloadedBytes)}</td></tr>"),
            "No builds or transfers in this span."));
        if (usage.Truncated)
        {
            body.Append(CultureInfo.InvariantCulture, $"<p class=\"notice\">More builds than {N(UsageReports.MaxBuilds)} in this span: the figures count the newest.</p>");
        }

        return ("Usage", body.ToString());
    }

    private async Task<(string, string)> AccountAsync(Visitor visitor, HttpContext context)
    {
        var caller = visitor.Caller;
        var cancel = context.RequestAborted;
        var body = new StringBuilder($"""
            <h1>Account {E(visitor.Account)}</h1>
            <dl class="facts">
            <dt>Logged in with</dt><dd>token #{caller.Token.Id}{(caller.Token.Description.Length > 0 ? $" ({E(caller.Token.Description)})" : "")}</dd>
            <dt>It may</dt><dd>{string.Join(" ", KeyPermissionNames.ToNames(caller.Token.Permissions).Select(p => $"<span class=\"tag\">{E(p)}</span>"))}</dd>
            <dt>Expires</dt><dd>{(caller.Token.Expires is { } expires ? E(BuildDocument.Time(expires)) : "never")}</dd>
            </dl>
            """);
        if (caller.Can(KeyPermissions.StoreRead))
        {
            using var view = store.OpenView(caller.Caller);
            var pins = await view.PinsAsync(cancel).ConfigureAwait(false);
            var removable = caller.Can(KeyPermissions.StoreWrite);
            body.Append("<section aria-labelledby=\"pins-h\"><h2 id=\"pins-h\">Pins</h2>");
            body.Append(Table("pins-table", "Pinned paths", ["Name", "Path", ""], pins.Select(p =>
                $"<tr><td>{E(p.Name)}</td><td><code class=\"path\">{E(p.Path.ToString())}</code></td><td>" +
                (removable ? $"<button type=\"button\" class=\"danger small\" data-remove-pin=\"{E(p.Name)}\" aria-label=\"Remove pin {E(p.Name)}\">Unpin</button>" : "") + "</td></tr>"),
                "No pins: garbage collection keeps only what Nix's roots hold."));
            body.Append("<p class=\"hint\">Pin a path with <code>ssh kiln@HOST pin add /nix/store/…</code>: it stays, with its closure, until unpinned.</p></section>");
        }

        if (!caller.Can(KeyPermissions.AccountWrite))
        {
            return ("Account", body.Append(NeedsNotice(visitor, KeyPermissions.AccountWrite, "manage keys, tokens or settings")).ToString());
        }

        var tokens = await accounts.ListTokensAsync(caller.Actor, caller.Account, cancel).ConfigureAwait(false);
        body.Append("<section aria-labelledby=\"tokens-h\"><h2 id=\"tokens-h\">Tokens</h2>");
        body.Append(Table("tokens-table", "Tokens", ["Id", "Description", "Permissions", "Created", "Expires", ""], tokens.Where(t => t.Revoked is null).Select(t =>
        {
            var document = TokenDocument.Of(t);
            var action = t.Id == caller.Token.Id ? "<span class=\"muted\">this session</span>"
                : $"<button type=\"button\" class=\"danger small\" data-revoke-token=\"{t.Id}\" aria-label=\"Revoke token {t.Id}\">Revoke</button>";
            return $"<tr><td>{t.Id}</td><td>{E(t.Description)}</td><td>{E(string.Join(", ", document.Permissions))}</td><td>{E(document.Created)}</td><td>{E(document.Expires ?? "never")}</td><td>{action}</td></tr>";
        }), "No tokens."));
        // What this token may grant: its own permissions, but the operator's server:read, which only the operator grants.
        var offered = KeyPermissionNames.ToNames(caller.Token.Permissions & KeyPermissions.All);
        body.Append(CultureInfo.InvariantCulture, $"""
            <form id="new-token" class="card form">
            <h3>New token</h3>
            <div><label for="t-description">Description</label><input id="t-description" name="description" maxlength="200" placeholder="CI of project X"></div>
            <div><label for="t-expires">Expires after</label><input id="t-expires" name="expires" placeholder="90d, 12h, 2027-01-31 or never" value="90d"></div>
            <fieldset><legend>Permissions</legend>
            {string.Concat(offered.Select(p => $"<label class=\"check\"><input type=\"checkbox\" name=\"permissions\" value=\"{E(p)}\"{(p == "store:read" ? " checked" : "")}> {E(p)}</label>"))}
            </fieldset>
            <button type="submit">Make token</button>
            <p id="new-token-result" role="status"></p>
            </form>
            </section>
            """);
        var keys = await accounts.ListKeysAsync(caller.Actor, caller.Account, cancel).ConfigureAwait(false);
        body.Append("<section aria-labelledby=\"keys-h\"><h2 id=\"keys-h\">SSH keys</h2>");
        body.Append(Table("keys-table", "SSH login keys", ["Fingerprint", "Type", "Comment", "Permissions", ""], keys.Select(k =>
            $"<tr><td><code>{E(k.Fingerprint)}</code></td><td>{E(k.Key.Type)}</td><td>{E(k.Key.Comment)}</td><td>{E(KeyPermissionNames.Format(k.Permissions, ", "))}</td>" +
            $"<td><button type=\"button\" class=\"danger small\" data-remove-key=\"{E(k.Fingerprint)}\" aria-label=\"Remove key {E(k.Fingerprint)}\">Remove</button></td></tr>"),
            "No keys."));
        body.Append("<p class=\"hint\">Add a key from a machine that holds it: <code>ssh kiln@HOST key add \"$(cat ~/.ssh/id_ed25519.pub)\"</code> — Kiln asks you to prove you hold it first.</p></section>");
        string signing;
        try
        {
            signing = $"<code class=\"path\">{E((await accounts.SigningKeyAsync(caller.Actor, caller.Account, cancel).ConfigureAwait(false)).ToString())}</code>";
        }
        catch (KilnException e) when (e.Kind == ErrorKind.NotFound)
        {
            signing = "none yet: builds are signed with the server's key";
        }

        var settings = SettingsDocument.Of(await accounts.SettingsAsync(caller.Actor, caller.Account, cancel).ConfigureAwait(false));
        body.Append(CultureInfo.InvariantCulture, $"""
            <section aria-labelledby="settings-h"><h2 id="settings-h">Signing and settings</h2>
            <dl class="facts">
            <dt>Signing key</dt><dd>{signing}</dd>
            <dt>Public cache</dt><dd>{(settings.PublicCache ? "yes: anyone may read the account's paths over HTTP" : "no")}</dd>
            <dt>Substituters</dt><dd>{(settings.Substituters.Length > 0 ? E(settings.Substituters) : "the server's")}</dd>
            <dt>Trusted public keys</dt><dd>{(settings.TrustedPublicKeys.Length > 0 ? E(settings.TrustedPublicKeys) : "the server's")}</dd>
            <dt>Cache credentials</dt><dd>{(settings.HasCredentials ? "set (never shown)" : "none")}</dd>
            </dl>
            <p class="hint">Substituters are the operator's to change. Credentials and the signing key are set from standard input, never shown: <code>ssh … kiln settings set netrc - &lt; FILE</code>, <code>… signing-key-for-builds - &lt; key.sec</code>.</p>
            </section>
            """);
        return ("Account", body.ToString());
    }

    private static (string, string) Farm(Visitor visitor)
    {
        // Only operators' tokens see the farm; to anyone else it is a page that does not exist.
        if (!visitor.Can(KeyPermissions.ServerRead))
        {
            throw new KilnException(ErrorKind.NotFound, "there is no such page");
        }

        return ("Farm", $"""
            <h1>Farm</h1>
            <section data-live="farm" aria-labelledby="farm-h">
            <h2 id="farm-h" class="sr-only">Now</h2>
            <div class="cards" id="farm-cards" aria-live="polite">Loading…</div>
            {Table("agents-table", "Agents", ["Agent", "Kind", "Systems", "Slots busy", "Load"], [], "No agent is connected.")}
            </section>
            """);
    }
}
