using System.Net;
using System.Security.Cryptography.X509Certificates;
using Kiln.Api;
using Kiln.Dashboard;
using Kiln.Http;
using Kiln.Http.ZeroCopy;
using Kiln.Protocol;
using Kiln.Store;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace Kiln.Server;

/// <summary>
/// The HTTP front: Kestrel on <see cref="ServerOptions.HttpListen"/> serving <see cref="BinaryCache"/>, the API
/// (<c>/api/v1</c>, <see cref="Kiln.Api.KilnApi"/>), the agents' protocol, <c>/metrics</c> (Prometheus) and the health probes. It is its own small web application inside
/// <c>kiln serve</c>'s host, sharing the store and the scheduler's log layout.
/// </summary>
public sealed partial class HttpCacheService(KilnStore store, ServerOptions options, Kiln.Farm.AgentGateway agents, Ssh.SshFrontDoor ssh,
    Kiln.Accounts.AccountService accounts, Kiln.Scheduler.BuildScheduler scheduler, Kiln.Scheduler.Queue.InMemoryJobQueue queue, ILoggerFactory loggers)
    : IHostedService, IAsyncDisposable
{
    private WebApplication? _app;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        if (options.HttpListen is null && options.AgentListen is null)
        {
            return;
        }

        var logger = loggers.CreateLogger("Kiln.Http");
        var endpoint = options.HttpListen is null ? null : IPEndPoint.Parse(options.HttpListen);
        var agentEndpoint = options.AgentListen is null ? null : IPEndPoint.Parse(options.AgentListen);
        // Loaded before anything listens: a wrong certificate or key is one clear line, not a half-started server.
        using var certificate = options.AgentTls is { } tls ? LoadCertificate(tls.Certificate, tls.Key) : null;
        var cache = new BinaryCache(store, new BinaryCacheOptions
        {
            StagingDirectory = Path.Combine(options.DataDirectory, "http-uploads"),
            MaxUploadSize = store.Options.MaxNarSize,
            MaxStagedPerAccount = options.HttpStagingLimit,
            NarRedirect = options.NarRedirect,
        }, logger);

        // Kiln's own directory as the content root, and no configuration file watched. ASP.NET Core's default reads
        // appsettings.json from the working directory and watches that directory, with all below it, for changes:
        // started from /, kiln serve held an inotify watch on every directory of the machine (30,126 here), and each
        // file written under its working directory (the data directory, often) woke a thread.
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            ApplicationName = "kiln",
            ContentRootPath = AppContext.BaseDirectory,
            Args = ["--hostBuilder:reloadConfigOnChange=false"],
        });
        // Kiln logs requests' outcomes itself; Kestrel's own warnings and errors (a connection it dropped, a failure
        // outside the handler) go to the same log, in the same format, never lost.
        builder.Logging.ClearProviders();
        KilnServer.ConfigureLogging(builder.Logging);
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        // /metrics: Kiln's instruments (KilnMetrics, and this server's gauges) in Prometheus's text format.
        builder.Services.AddOpenTelemetry().ConfigureResource(resource => resource.AddService("kiln")).WithMetrics(metrics => metrics
            .AddMeter(KilnMetrics.MeterName, KilnMetrics.ServerMeterName)
            .AddPrometheusExporter(exporter => exporter.ScrapeResponseCacheDurationMilliseconds = 0));
        builder.Services.AddKilnApi();
        var health = new Observability.HealthEndpoints(store, options, () => ssh.SshdRunning);
        // Kiln trusts no forwarding header, whatever ASPNETCORE_FORWARDEDHEADERS_ENABLED says: a client's address is the
        // connection's (who may scrape /metrics depends on it).
        builder.Services.PostConfigure<Microsoft.AspNetCore.Builder.ForwardedHeadersOptions>(forwarded =>
            forwarded.ForwardedHeaders = Microsoft.AspNetCore.HttpOverrides.ForwardedHeaders.None);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            if (endpoint is not null)
            {
                kestrel.Listen(endpoint, listen => ZeroCopyFiles.Listen(listen)); // NAR bodies by sendfile
            }

            if (agentEndpoint is not null)
            {
                kestrel.Listen(agentEndpoint, listen =>
                {
                    if (certificate is not null)
                    {
                        // Kestrel keeps its own copy: the PEM-loaded key is ephemeral, which TLS on Linux accepts.
                        listen.UseHttps(X509CertificateLoader.LoadPkcs12(certificate.Export(X509ContentType.Pkcs12), null));
                    }
                });
            }

            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = null; // uploads are bounded by the cache, per kind of file
            kestrel.Limits.MinRequestBodyDataRate = new MinDataRate(bytesPerSecond: 1024, gracePeriod: TimeSpan.FromSeconds(30));
        });
        _app = builder.Build();
        ZeroCopyFiles.Use(_app);
        bool OnAgentListener(HttpContext context) => agentEndpoint is not null && context.Connection.LocalPort == agentEndpoint.Port &&
            (agentEndpoint.Address.Equals(IPAddress.Any) || agentEndpoint.Address.Equals(IPAddress.IPv6Any) ||
             agentEndpoint.Address.Equals(context.Connection.LocalIpAddress));
        bool IsScrape(HttpContext context) => endpoint is not null && context.Request.Path.Value == Observability.HealthEndpoints.MetricsPath;
        // With a listener of their own, agents are answered there only (a misconfigured agent must not send its token
        // over the cache's plain listener), and that listener answers nothing else.
        bool Misdirected(HttpContext context) => agentEndpoint is not null && OnAgentListener(context) != Kiln.Farm.AgentGateway.Handles(context);
        _app.Use((context, next) => Misdirected(context) ? NotFound(context) : next(context));
        _app.Use((context, next) => IsScrape(context) && !health.MayScrape(context) ? Observability.HealthEndpoints.RefuseAsync(context) : next(context));
        _app.UseOpenTelemetryPrometheusScrapingEndpoint(IsScrape);
        var control = new SchedulerControl(scheduler, queue);
        var sessions = new BrowserSessions(store, options.PublicUrl);
        _app.UseKilnDashboard(store, accounts, sessions);
        _app.UseKilnApi(store, accounts, control, sessions);
        // Agents dial in to the same listener (their requests are under one prefix; the rest is the binary cache), or
        // to their own.
        _app.Run(context => Kiln.Farm.AgentGateway.Handles(context) ? agents.HandleAsync(context)
            : Observability.HealthEndpoints.Handles(context) ? health.HandleAsync(context)
            : cache.HandleAsync(context));
        try
        {
            await _app.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (IOException e)
        {
            // As for sshd: the store, the socket and SSH keep working; the log says why HTTP does not.
            LogNoHttp(logger, (endpoint ?? agentEndpoint)!, e.Message);
            await _app.DisposeAsync().ConfigureAwait(false);
            _app = null;
            return;
        }

        if (endpoint is not null)
        {
            LogListening(logger, endpoint);
        }

        if (agentEndpoint is not null)
        {
            LogAgentsListening(logger, certificate is null ? "http" : "https", agentEndpoint);
        }
    }

    private static X509Certificate2 LoadCertificate(string certificate, string key)
    {
        try
        {
            return X509Certificate2.CreateFromPemFile(certificate, key);
        }
        catch (System.Security.Cryptography.CryptographicException e)
        {
            throw new ArgumentException($"cannot load the agent listener's certificate {certificate} with key {key}: {e.Message}", e);
        }
    }

    private static Task NotFound(HttpContext context)
    {
        context.Response.StatusCode = StatusCodes.Status404NotFound;
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        agents.Stop();
        if (_app is not null)
        {
            await _app.StopAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_app is not null)
        {
            await _app.DisposeAsync().ConfigureAwait(false);
        }
    }

    [LoggerMessage(EventId = LogEvents.HttpNotListening, Level = LogLevel.Error, Message = "http: cannot listen on {Endpoint} ({Reason}); serving without the HTTP binary cache")]
    private static partial void LogNoHttp(ILogger logger, IPEndPoint endpoint, string reason);

    [LoggerMessage(EventId = LogEvents.AgentsListening, Level = LogLevel.Information, Message = "agents: listening on {Scheme}://{Url}")]
    private static partial void LogAgentsListening(ILogger logger, string scheme, IPEndPoint url);

    [LoggerMessage(EventId = LogEvents.HttpListening, Level = LogLevel.Information, Message = "http: listening on http://{Url} (binary cache)")]
    private static partial void LogListening(ILogger logger, IPEndPoint url);
}

/// <summary>The API's port to the scheduler.</summary>
internal sealed class SchedulerControl(Kiln.Scheduler.BuildScheduler scheduler, Kiln.Scheduler.Queue.InMemoryJobQueue queue) : IBuildControl
{
    /// <summary>A front door's farm alone (what it publishes on the queue board).</summary>
    public static FarmDocument FarmOf(Kiln.Scheduler.Queue.InMemoryJobQueue queue)
    {
        var now = queue.Snapshot();
        return new FarmDocument(now.Waiting, now.Leased, now.Slots, now.BusySlots, now.FinishedLastHour, now.FinishedLastFiveMinutes,
            [.. now.Loads.Select(a => new FarmAgentDocument(a.Name, a.StockBuilder ? "stock-builder" : "agent", a.Systems, a.Slots, a.Busy))]);
    }

    public async Task<FarmDocument> FarmAsync(CancellationToken cancellationToken) =>
        FarmDocument.Of(FarmOf(queue), await scheduler.FarmsElsewhereAsync(cancellationToken).ConfigureAwait(false));

    public async Task<bool> CancelAsync(long buildId, long account, CancellationToken cancellationToken) =>
        await WithElsewhereAsync(scheduler.Cancel(buildId, account) ? 1 : 0,
            () => scheduler.CancelElsewhereAsync(account, buildId, null, cancellationToken)).ConfigureAwait(false) > 0;

    public Task<int> CancelDerivationAsync(Kiln.Nix.StorePaths.StorePath drvPath, long account, CancellationToken cancellationToken) =>
        WithElsewhereAsync(scheduler.CancelDerivation(drvPath, account), () => scheduler.CancelElsewhereAsync(account, null, drvPath, cancellationToken));

    // What this front door cancelled plus what the others were asked to. With their board unreachable, what was cancelled
    // here is the answer; when nothing was, the failure is (503, try again), not a "nothing waits" that may be untrue.
    private async Task<int> WithElsewhereAsync(int here, Func<Task<int>> elsewhere)
    {
        try
        {
            return here + await elsewhere().ConfigureAwait(false);
        }
        catch (Exception e) when (here > 0 && e is not OperationCanceledException)
        {
            scheduler.BoardUnreachable(e);
            return here;
        }
        catch (Exception e) when (e is not OperationCanceledException and not KilnException)
        {
            scheduler.BoardUnreachable(e);
            throw new KilnException(ErrorKind.Unavailable, "Kiln's other front doors cannot be asked right now (their shared database is unreachable); try again", e);
        }
    }

    public async Task<QueueDocument> QueueAsync(long account, CancellationToken cancellationToken)
    {
        var (waiting, steps) = scheduler.QueueFor(account);
        var here = steps.Select(s => QueueEntryDocument.Of(s.For(account))).ToList();
        return QueueDocument.Of(new QueueDocument(waiting, here), await scheduler.ElsewhereAsync(account, cancellationToken).ConfigureAwait(false));
    }
}
