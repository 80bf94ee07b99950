using System.Net;
using System.Security.Cryptography;
using System.Text;
using Kiln.Store;
using Microsoft.AspNetCore.Http;

namespace Kiln.Server.Observability;

/// <summary>
/// The HTTP front's operator endpoints: <c>/healthz</c> (the process answers), <c>/readyz</c> (the database and the
/// blob store answer, and sshd runs when the SSH front door is configured: 503 naming what does not) and who may
/// scrape <c>/metrics</c> — with <c>--metrics-token</c>, whoever sends it (from this host too); without, this host
/// only (a request a reverse proxy forwarded does not count as this host's). Health answers carry no account, path or
/// key: they are open, and <c>/readyz</c>'s checks are shared by the probes of the same 2 s.
/// </summary>
public sealed class HealthEndpoints(KilnStore store, ServerOptions options, Func<bool?> sshdRunning)
{
    public const string MetricsPath = "/metrics";

    // Each check gets this long: a load balancer asks again, and a hung database must not hang its probe.
    private static readonly TimeSpan CheckTimeout = TimeSpan.FromSeconds(5);

    // A NAR hash nothing has: asking the blob store for it is a round trip that changes nothing.
    private static readonly Kiln.Nix.Hashing.NixHash Probe = new(Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, new byte[32]);

    private readonly byte[]? _metricsToken = options.MetricsToken is { } token ? Encoding.UTF8.GetBytes(token) : null;

    /// <summary>Whether the request is for one of these endpoints (GET or HEAD of <c>/healthz</c> or <c>/readyz</c>).</summary>
    public static bool Handles(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        return (HttpMethods.IsGet(context.Request.Method) || HttpMethods.IsHead(context.Request.Method)) &&
            context.Request.Path.Value is "/healthz" or "/readyz";
    }

    public async Task HandleAsync(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (context.Request.Path.Value == "/healthz")
        {
            await WriteAsync(context, StatusCodes.Status200OK, "ok\n").ConfigureAwait(false);
            return;
        }

        var (ready, text) = await ReadinessAsync().ConfigureAwait(false);
        await WriteAsync(context, ready ? StatusCodes.Status200OK : StatusCodes.Status503ServiceUnavailable, text).ConfigureAwait(false);
    }

    // One round of checks serves every probe of the next 2 s: /readyz is open, and must not become a way to make Kiln
    // query its database and blob store as fast as someone can ask.
    private Task<(bool Ready, string Text)> ReadinessAsync()
    {
        lock (_readinessGate)
        {
            if (_readiness is null || (_readiness.IsCompleted && Environment.TickCount64 - _readinessAt > 2000))
            {
                _readinessAt = Environment.TickCount64;
                _readiness = CheckAllAsync();
            }

            return _readiness;
        }
    }

    private readonly Lock _readinessGate = new();
    private Task<(bool Ready, string Text)>? _readiness;
    private long _readinessAt;

    private async Task<(bool Ready, string Text)> CheckAllAsync()
    {
        var checks = new List<(string Name, string? Problem)>
        {
            ("database", await CheckAsync(async token => await store.Accounts.FindAccountAsync(options.SocketAccount, token).ConfigureAwait(false)).ConfigureAwait(false)),
            ("blobs", await CheckAsync(async token => await store.Blobs.HasAsync(Probe, token).ConfigureAwait(false)).ConfigureAwait(false)),
        };
        if (sshdRunning() is { } running)
        {
            checks.Add(("sshd", running ? null : "not running"));
        }

        var ready = checks.All(c => c.Problem is null);
        var text = new StringBuilder();
        foreach (var (name, problem) in checks)
        {
            text.Append(name).Append(": ").Append(problem ?? "ok").Append('\n');
        }

        return (ready, text.ToString());
    }

    // A check's problem in a few words (never the exception's text: it may name a host, a bucket or a credential).
    private static async Task<string?> CheckAsync(Func<CancellationToken, Task> check)
    {
        using var limit = new CancellationTokenSource(CheckTimeout);
        try
        {
            await check(limit.Token).ConfigureAwait(false);
            return null;
        }
        catch (OperationCanceledException)
        {
            return $"no answer within {CheckTimeout.TotalSeconds:0} s";
        }
#pragma warning disable CA1031 // whatever the backend threw, the probe answers "not ready"
        catch (Exception)
#pragma warning restore CA1031
        {
            return "unreachable";
        }
    }

    /// <summary>Whether this request may read <c>/metrics</c>.</summary>
    public bool MayScrape(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var request = context.Request;
        if (_metricsToken is not null)
        {
            // With a token, every scrape shows it, this host's too: a plain TCP forwarder (socat, ssh -L, a proxy
            // adding no header) makes any client look local.
            var header = request.Headers.Authorization.ToString();
            return header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) &&
                CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header["Bearer ".Length..].Trim()), _metricsToken);
        }

        var remote = context.Connection.RemoteIpAddress;
        var forwarded = request.Headers.ContainsKey("X-Forwarded-For") || request.Headers.ContainsKey("Forwarded") || request.Headers.ContainsKey("X-Real-IP") ||
            request.Headers.ContainsKey("X-Original-For");
        return remote is not null && IPAddress.IsLoopback(remote) && !forwarded;
    }

    /// <summary>The answer to a scrape that may not read the metrics.</summary>
    public static Task RefuseAsync(HttpContext context) =>
        WriteAsync(context, StatusCodes.Status403Forbidden, "metrics are served to this host, or to scrapes with the server's --metrics-token\n");

    private static async Task WriteAsync(HttpContext context, int status, string text)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "text/plain; charset=utf-8";
        context.Response.Headers.CacheControl = "no-store";
        if (!HttpMethods.IsHead(context.Request.Method))
        {
            await context.Response.WriteAsync(text, context.RequestAborted).ConfigureAwait(false);
        }
    }
}
