using System.Globalization;
using System.Text;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Kiln.Api;

/// <summary><c>/builds</c>: the builds the caller's account was for (started, joined or reused), and their logs.</summary>
internal static class BuildEndpoints
{
    private const int DefaultLimit = 50;
    private const int MaxLimit = 1000;

    public static void Map(RouteGroupBuilder api, KilnStore store, IBuildControl control, LogLinks links)
    {
        var followers = new Followers();
        api.MapGet("/me", (HttpContext context) =>
        {
            var caller = ApiCaller.Of(context);
            return TypedResults.Ok(new MeDocument(caller.Account.Name, TokenDocument.Of(caller.Token), KeyPermissionNames.ToNames(caller.Token.Permissions)));
        }).WithSummary("The caller's account, token and permissions.");

        api.MapGet("/builds", async Task<IResult> (HttpContext context, string? status, string? tag, string? since, string? until, string? name, int? limit, string? cursor) =>
        {
            var caller = ApiCaller.Of(context);
            caller.Need(KeyPermissions.BuildRead);
            var query = BuildFilters.Parse(status, tag, since, until) with
            {
                NameContains = name is null ? null : name.Length <= 200 && !name.Any(char.IsControl) ? name : throw Invalid("name is at most 200 printable characters"),
                Limit = limit is null ? DefaultLimit : limit is >= 1 and <= MaxLimit ? limit.Value : throw Invalid($"limit must be 1 to {MaxLimit}"),
                Before = cursor is null ? null : long.TryParse(cursor, NumberStyles.None, CultureInfo.InvariantCulture, out var before) ? before : throw Invalid("that cursor is not one this API gave"),
            };
            using var view = store.OpenView(caller.Caller);
            var builds = await view.ListBuildsAsync(query, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.Ok(new BuildPage([.. builds.Select(b => BuildDocument.Of(b, caller.Caller.AccountId))],
                builds.Count == query.Limit ? builds[^1].Id.ToString(CultureInfo.InvariantCulture) : null));
        }).WithSummary("The caller's builds, newest first, a page at a time (pass the answer's next as cursor); tag is name=value; name: the derivation's name contains it.")
          .Produces<BuildPage>().ProducesProblem(StatusCodes.Status400BadRequest).ProducesProblem(StatusCodes.Status403Forbidden);

        api.MapGet("/builds/summary", async Task<IResult> (HttpContext context, string? tag, string? status, string? since, string? until, string? format) =>
        {
            var caller = ApiCaller.Of(context);
            caller.Need(KeyPermissions.BuildRead);
            using var view = store.OpenView(caller.Caller);
            var expires = DateTimeOffset.UtcNow.AddDays(1);
            var summary = await Summaries.SummarizeAsync(view, BuildFilters.Parse(status, tag, since, until),
                async id => await links.LinkAsync(context.Request, id, expires).ConfigureAwait(false), context.RequestAborted,
                id => $"{links.Base(context.Request)}{LogLinks.DashboardBuilds}{id}").ConfigureAwait(false);
            return format switch
            {
                null or "json" => TypedResults.Ok(summary),
                "markdown" => TypedResults.Text(Summaries.Markdown(summary), "text/markdown; charset=utf-8"),
                _ => throw Invalid("format is json or markdown"),
            };
        }).WithSummary("What the builds a tag (or a time span) selects came to, for a CI job's summary: counts, CPU and build time, the slowest, the failures with signed links to their logs (valid a day); format=markdown for Markdown.")
          .Produces<SummaryDocument>().Produces<string>(contentType: "text/markdown").ProducesProblem(StatusCodes.Status400BadRequest);

        api.MapGet("/queue", async Task<IResult> (HttpContext context) =>
        {
            var caller = ApiCaller.Of(context);
            caller.Need(KeyPermissions.BuildRead);
            return TypedResults.Ok(await control.QueueAsync(caller.Account.Id, context.RequestAborted).ConfigureAwait(false));
        }).WithSummary("The caller's builds Kiln's front doors run or have in line: running (on which agent), waiting (place in line), no agent can run them, preparing, or account-limit (waiting for one of the account's max-jobs builds on the front doors to end; no record yet, id null).")
          .Produces<QueueDocument>();

        api.MapPost("/queue/cancel", async Task<IResult> (HttpContext context, string? derivation) =>
        {
            var caller = ApiCaller.Of(context);
            caller.Need(KeyPermissions.BuildWrite);
            if (!StorePath.TryParse(derivation, out var drvPath) || !drvPath.IsDerivation)
            {
                throw Invalid("derivation must be a store path ending in .drv (as the queue lists it)");
            }

            var ended = await control.CancelDerivationAsync(drvPath, caller.Account.Id, context.RequestAborted).ConfigureAwait(false);
            return ended > 0
                ? TypedResults.Accepted($"{KilnApi.Prefix}/queue", new QueueCancelDocument(drvPath.ToString(), ended))
                : throw new KilnException(ErrorKind.Conflict, $"no request of this account waits for '{drvPath}' (it may have ended)");
        }).WithSummary("Cancels the account's requests for a derivation on every front door, whatever their state (the way to cancel an account-limit entry, which has no id): they fail, and the build stops unless another account still waits for it (needs build:write).")
          .Produces<QueueCancelDocument>(StatusCodes.Status202Accepted).ProducesProblem(StatusCodes.Status400BadRequest).ProducesProblem(StatusCodes.Status409Conflict);

        api.MapGet("/farm", async Task<IResult> (HttpContext context) =>
        {
            ApiCaller.Of(context).Need(KeyPermissions.ServerRead);
            return TypedResults.Ok(await control.FarmAsync(context.RequestAborted).ConfigureAwait(false));
        }).WithSummary("The farm (operators: server:read): agents with their slots (and front door, when another one's), the whole queue, jobs finished lately, on every front door.")
          .Produces<FarmDocument>().ProducesProblem(StatusCodes.Status403Forbidden);

        api.MapGet("/usage", async Task<IResult> (HttpContext context, string? since, string? until, string? by) =>
        {
            var caller = ApiCaller.Of(context);
            caller.Need(KeyPermissions.BuildRead);
            using var view = store.OpenView(caller.Caller);
            return TypedResults.Ok(await UsageReports.ReportAsync(view, BuildFilters.Parse(null, null, since, until), UsageReports.ByMonth(by), context.RequestAborted).ConfigureAwait(false));
        }).WithSummary("What the account used: its store now (shared content counts for every account that holds it), and per day or month the builds it started, CPU and wall hours.")
          .Produces<UsageDocument>().ProducesProblem(StatusCodes.Status400BadRequest);

        api.MapGet("/builds/{id:long}", async Task<IResult> (HttpContext context, long id) =>
        {
            var caller = ApiCaller.Of(context);
            var build = await caller.VisibleBuildAsync(store, id, KeyPermissions.BuildRead, context.RequestAborted).ConfigureAwait(false);
            var tags = await store.Builds.GetBuildTagsAsync(id, caller.Account.Id, context.RequestAborted).ConfigureAwait(false);
            var pushes = await store.Pushes.GetPushesAsync(caller.Account.Id, id, 50, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.Ok(BuildDocument.Of(build, caller.Caller.AccountId) with { Tags = [.. tags.Select(t => t.ToString())], Pushes = [.. pushes.Select(PushDocument.Of)] });
        }).WithSummary("One build: derivation, outputs, status, times, CPU, memory, agent.")
          .Produces<BuildDocument>().ProducesProblem(StatusCodes.Status404NotFound);

        api.MapPost("/builds/{id:long}/cancel", async Task<IResult> (HttpContext context, long id) =>
        {
            var caller = ApiCaller.Of(context);
            var build = await caller.VisibleBuildAsync(store, id, KeyPermissions.BuildWrite, context.RequestAborted).ConfigureAwait(false);
            if (!build.Running)
            {
                throw new KilnException(ErrorKind.Conflict, $"build {id} has ended ({BuildDocument.StatusOf(build)})");
            }

            return await control.CancelAsync(id, caller.Caller.AccountId!.Value, context.RequestAborted).ConfigureAwait(false)
                ? TypedResults.Accepted($"{KilnApi.Prefix}/builds/{id}", BuildDocument.Of(build, caller.Caller.AccountId))
                : throw new KilnException(ErrorKind.Conflict, $"no request of this account waits for build {id}");
        }).WithSummary("Cancels the account's requests for a running build: they fail, and the build stops unless another account still waits for it (needs build:write).")
          .Produces<BuildDocument>(StatusCodes.Status202Accepted).ProducesProblem(StatusCodes.Status404NotFound).ProducesProblem(StatusCodes.Status409Conflict);

        api.MapGet("/builds/{id:long}/log", async Task<IResult> (HttpContext context, long id, string? follow) =>
        {
            var caller = ApiCaller.Of(context);
            var build = await caller.VisibleBuildAsync(store, id, KeyPermissions.BuildRead, context.RequestAborted).ConfigureAwait(false);
            var wantsEvents = follow is "1" or "true" || context.Request.Headers.Accept.ToString().Contains("text/event-stream", StringComparison.Ordinal);
            if (wantsEvents)
            {
                if (!followers.TryEnter(caller.Account.Id))
                {
                    return Problems.Of(StatusCodes.Status429TooManyRequests, "too-many-followers",
                        $"this account follows {Followers.PerAccount} logs already; close one first");
                }

                try
                {
                    await FollowAsync(context, store, build).ConfigureAwait(false);
                }
                finally
                {
                    followers.Leave(caller.Account.Id);
                }

                return TypedResults.Empty;
            }

            using var view = store.OpenView(caller.Caller);
            return LogText(await view.OpenBuildLogAsync(build.Id, context.RequestAborted).ConfigureAwait(false));
        }).WithSummary("A build's log as text; with ?follow=1 (or Accept: text/event-stream) as Server-Sent Events while it runs: one 'line' event per line, then 'end'.")
          .Produces<string>(contentType: "text/plain").Produces<string>(contentType: "text/event-stream").ProducesProblem(StatusCodes.Status404NotFound);
    }

    // Server-Sent Events: each line an event (its number the id, so a client reconnecting with Last-Event-ID carries on
    // after it), then an 'end' event with the build's status once the log is whole.
    private static async Task FollowAsync(HttpContext context, KilnStore store, BuildRecord build)
    {
        var response = context.Response;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no"; // nginx in front: pass events on as they come
        var resumeAfter = long.TryParse(context.Request.Headers["Last-Event-ID"].ToString(), NumberStyles.None, CultureInfo.InvariantCulture, out var last) ? last : 0;
        // The token is looked at again every half minute: revoked or expired, it stops receiving.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        var cancel = stop.Token;
        var caller = ApiCaller.Of(context);
        var recheck = RecheckAsync(store, caller, stop);
        var writer = response.BodyWriter;
        long number = 0;
        try
        {
            await response.StartAsync(cancel).ConfigureAwait(false);
            await foreach (var line in store.Logs.FollowAsync(build.Id, cancel).ConfigureAwait(false))
            {
                if (++number <= resumeAfter)
                {
                    continue;
                }

                // A line may hold a carriage return (progress bars); an event's data ends at any line break, so it goes.
                await writer.WriteAsync(Encoding.UTF8.GetBytes($"id: {number}\nevent: line\ndata: {line.Replace("\r", "", StringComparison.Ordinal)}\n\n"), cancel)
                    .ConfigureAwait(false);
            }

            // The log is whole once its writer is done, a moment before the build's outcome is recorded: wait for that.
            using var view = store.OpenView(caller.Caller);
            var ended = build;
            for (var tries = 0; tries < 50 && ended.Running; tries++)
            {
                await Task.Delay(tries == 0 ? 0 : 100, cancel).ConfigureAwait(false);
                ended = await view.GetBuildAsync(build.Id, cancel).ConfigureAwait(false) ?? ended;
            }

            await writer.WriteAsync(Encoding.UTF8.GetBytes($"event: end\ndata: {BuildDocument.StatusOf(ended)}\n\n"), cancel).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            // the client went away, or its token is no longer valid: nothing more to send
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            await recheck.ConfigureAwait(false);
        }
    }

    /// <summary>A signed link's log, without a token (<see cref="LogLinks"/>).</summary>
    public static void MapSigned(IEndpointRouteBuilder routes, KilnStore store, LogLinks links) =>
        routes.MapGet(LogLinks.Path + "/{id:long}/log", async Task<IResult> (HttpContext context, long id, long? expires, string? signature) =>
        {
            if (expires is null || !await links.ValidAsync(id, expires.Value, signature, DateTimeOffset.UtcNow).ConfigureAwait(false))
            {
                return Problems.Of(StatusCodes.Status403Forbidden, "forbidden", "this log link is not valid: it has expired, or it was altered");
            }

            // The page it is opened from is not told where it came from (no-store and nosniff: as every API answer).
            context.Response.Headers["Referrer-Policy"] = "no-referrer";
            return LogText(await store.Logs.OpenReadAsync(id, 0, context.RequestAborted).ConfigureAwait(false));
        }).WithSummary("One build's log through a signed link (from a summary); no token.").WithTags("v1")
          .Produces<string>(contentType: "text/plain").ProducesProblem(StatusCodes.Status403Forbidden);

    // A log as plain text (a build that wrote none: empty).
    private static IResult LogText(Stream? log) =>
        log is null ? TypedResults.Text("", "text/plain; charset=utf-8") : TypedResults.Stream(log, "text/plain; charset=utf-8");

    private static async Task RecheckAsync(KilnStore store, ApiCaller caller, CancellationTokenSource stop)
    {
        try
        {
            while (true)
            {
                await Task.Delay(RecheckInterval, stop.Token).ConfigureAwait(false);
                if (!await caller.StillValidAsync(store, stop.Token).ConfigureAwait(false))
                {
                    await stop.CancelAsync().ConfigureAwait(false);
                    return;
                }
            }
        }
        catch (OperationCanceledException)
        {
            // the stream ended
        }
    }

    internal static TimeSpan RecheckInterval { get; set; } = TimeSpan.FromSeconds(30);

    // How many logs each account follows at once (each holds a connection and a file): a bound per account.
    private sealed class Followers
    {
        public const int PerAccount = 32;

        private readonly Dictionary<long, int> _counts = [];

        public bool TryEnter(long account)
        {
            lock (_counts)
            {
                var count = _counts.GetValueOrDefault(account);
                if (count >= PerAccount)
                {
                    return false;
                }

                _counts[account] = count + 1;
                return true;
            }
        }

        public void Leave(long account)
        {
            lock (_counts)
            {
                if (--_counts[account] == 0)
                {
                    _counts.Remove(account);
                }
            }
        }
    }

    private static KilnException Invalid(string message) => new(ErrorKind.Invalid, message);
}
