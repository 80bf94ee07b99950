using Kiln.Accounts;
using Kiln.Protocol;
using Kiln.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace Kiln.Api;

/// <summary>
/// Kiln's HTTP API, <c>/api/v1</c>, on the HTTP front's listener: JSON for programs, authenticated by the same
/// tokens as the binary cache (<c>Authorization: Bearer</c>), each endpoint needing one permission of the token.
/// It answers through the same services as the SSH shell and the CLI: visibility from the token's <see cref="StoreView"/>,
/// account rules from <see cref="AccountService"/>; nothing here decides who may see what.
/// </summary>
public static class KilnApi
{
    public const string Prefix = "/api/v1";

    /// <summary>Where the OpenAPI document is served (without a token: it describes the API, not anyone's data).</summary>
    public const string OpenApiPath = Prefix + "/openapi.json";

    /// <summary>The services the API needs on the web application it is mapped into.</summary>
    public static IServiceCollection AddKilnApi(this IServiceCollection services)
    {
        services.AddOpenApi(options => options.AddDocumentTransformer((document, _, _) =>
        {
            document.Info = new() { Title = "Kiln", Version = "v1", Description = "Builds, logs, paths, tokens and keys of the caller's account." };
            return Task.CompletedTask;
        }));
        // Errors the framework answers itself (a body that is not JSON, a method the endpoint does not take) get a
        // code too, so every API error has one.
        services.AddProblemDetails(options => options.CustomizeProblemDetails = problem =>
        {
            if (!problem.ProblemDetails.Extensions.ContainsKey("code"))
            {
                var code = problem.ProblemDetails.Status switch
                {
                    StatusCodes.Status400BadRequest => "invalid",
                    StatusCodes.Status401Unauthorized => "unauthorized",
                    StatusCodes.Status403Forbidden => "forbidden",
                    StatusCodes.Status404NotFound => "not-found",
                    StatusCodes.Status405MethodNotAllowed => "method-not-allowed",
                    StatusCodes.Status415UnsupportedMediaType => "unsupported-media-type",
                    _ => "failed",
                };
                problem.ProblemDetails.Type = $"urn:kiln:problem:{code}";
                problem.ProblemDetails.Extensions["code"] = code;
            }
        });
        return services;
    }

    /// <summary>The most a request to the API may send (a new token's description is the largest thing it takes).</summary>
    public const long MaxRequestBody = 64 * 1024;

    /// <summary>
    /// Puts the API into <paramref name="app"/>'s pipeline at this point: requests under <see cref="Prefix"/> are answered
    /// here; everything else goes on to what comes next.
    /// </summary>
    public static void UseKilnApi(this WebApplication app, KilnStore store, AccountService accounts, IBuildControl builds, BrowserSessions sessions)
    {
        ArgumentNullException.ThrowIfNull(app);
        ArgumentNullException.ThrowIfNull(sessions);
        app.UseWhen(context => context.Request.Path.StartsWithSegments(Prefix, StringComparison.OrdinalIgnoreCase), api =>
        {
            api.UseStatusCodePages();
            // The token is checked before routing runs an endpoint, which would read and parse a request's body first:
            // a caller without one gets nothing read, and nobody sends more than a small body.
            api.Use(async (context, next) =>
            {
                if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit)
                {
                    limit.MaxRequestBodySize = MaxRequestBody;
                }

                // Answers are about one account (a new token's secret among them): nothing along the way keeps them, and a
                // log (text a builder wrote) is never taken for a script or a page.
                context.Response.Headers.CacheControl = "private, no-store";
                context.Response.Headers.XContentTypeOptions = "nosniff";

                if (!Anonymous(context.Request.Path))
                {
                    var header = context.Request.Headers.Authorization.ToString();
                    var bearer = header.StartsWith("Bearer ", StringComparison.Ordinal) ? header[7..].Trim() : null;
                    // Without a Bearer token, the dashboard's session cookie; a change through it needs the session's CSRF token.
                    var token = bearer ?? sessions.TokenOf(context.Request) ?? "";
                    if (await store.FindValidTokenAsync(token, context.RequestAborted).ConfigureAwait(false) is not { } record)
                    {
                        await Problems.Unauthorized(context).ExecuteAsync(context).ConfigureAwait(false);
                        return;
                    }

                    if (bearer is null && !BrowserSessions.Safe(context.Request)
                        && (sessions.CrossSite(context.Request) || !await sessions.ValidCsrfAsync(token, context.Request.Headers[BrowserSessions.CsrfHeader]).ConfigureAwait(false)))
                    {
                        await Problems.Of(StatusCodes.Status403Forbidden, "csrf", $"a change through a browser session needs its {BrowserSessions.CsrfHeader} header")
                            .ExecuteAsync(context).ConfigureAwait(false);
                        return;
                    }

                    new ApiCaller(record, token).Attach(context);
                }

                await next(context).ConfigureAwait(false);
            });
        });
        app.UseRouting();
        app.MapKilnApi(store, accounts, builds, sessions);
        app.UseEndpoints(_ => { });
    }

    // What answers without a token: the API's description, and signed log links (their signature is the credential).
    private static bool Anonymous(PathString path) =>
        path.Equals(OpenApiPath, StringComparison.OrdinalIgnoreCase) || path.StartsWithSegments(LogLinks.Path, StringComparison.OrdinalIgnoreCase);

    private static void MapKilnApi(this IEndpointRouteBuilder routes, KilnStore store, AccountService accounts, IBuildControl builds, BrowserSessions sessions)
    {
        routes.MapOpenApi(OpenApiPath);
        var api = routes.MapGroup(Prefix).AddEndpointFilter(async (invocation, next) =>
        {
            try
            {
                return await next(invocation).ConfigureAwait(false);
            }
            catch (KilnException e)
            {
                return Problems.Of(e);
            }
        }).WithTags("v1");
        var links = new LogLinks(store, sessions.PublicUrl);
        BuildEndpoints.Map(api, store, builds, links);
        BuildEndpoints.MapSigned(routes, store, links);
        AccountEndpoints.Map(api, accounts);
        PathEndpoints.Map(api, store);
        // Anything else under the prefix is a problem document too, not the binary cache's plain 404.
        routes.Map(Prefix + "/{**rest}", () => Problems.Of(StatusCodes.Status404NotFound, "not-found", "there is no such API endpoint (see " + OpenApiPath + ")"))
            .ExcludeFromDescription();
    }
}
