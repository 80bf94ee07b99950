using Kiln.Accounts;
using Kiln.Api;
using Kiln.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Kiln.Dashboard;

/// <summary>
/// Kiln's web dashboard, <c>/ui</c>, on the HTTP front's listener: server-rendered pages with a little script, which
/// reads the live parts (queue, log, farm) and makes changes (cancel, tokens, keys) through the API (<c>/api/v1</c>)
/// with the browser's session — so the dashboard holds no rule of its own about who may see or do what.
/// A visitor logs in with a token; it is kept in an HttpOnly, SameSite=Strict cookie (<see cref="BrowserSessions"/>).
/// </summary>
public static class KilnDashboard
{
    public const string Prefix = "/ui";

    // Scripts and styles only from here, no frames, forms only to here: a log line that slipped through as markup still
    // could not run or send anything anywhere.
    private const string ContentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

    /// <summary>Maps the dashboard into <paramref name="app"/>: <c>/</c> leads to it; pages and assets under <see cref="Prefix"/>.</summary>
    public static void UseKilnDashboard(this WebApplication app, KilnStore store, AccountService accounts, BrowserSessions sessions)
    {
        ArgumentNullException.ThrowIfNull(app);
        app.UseWhen(context => context.Request.Path.StartsWithSegments(Prefix, StringComparison.OrdinalIgnoreCase), ui => ui.Use((context, next) =>
        {
            var headers = context.Response.Headers;
            headers.ContentSecurityPolicy = ContentSecurityPolicy;
            headers.XContentTypeOptions = "nosniff";
            headers.XFrameOptions = "DENY";
            headers["Referrer-Policy"] = "same-origin";
            if (context.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit)
            {
                limit.MaxRequestBodySize = KilnApi.MaxRequestBody;
            }

            return next(context);
        }));
        var pages = new Pages(store, accounts, sessions);
        app.MapGet("/", () => Results.Redirect(Prefix + "/")).ExcludeFromDescription();
        var ui = app.MapGroup(Prefix).ExcludeFromDescription();
        pages.Map(ui);
        Assets.Map(ui);
    }
}
