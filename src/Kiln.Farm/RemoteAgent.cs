using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Kiln.Agent;
using Kiln.Protocol;
using Microsoft.Extensions.Logging;

namespace Kiln.Farm;

/// <summary>How <c>kiln agent</c> runs.</summary>
public sealed record RemoteAgentOptions
{
    /// <summary>The Kiln server's HTTP front (<c>http://HOST:PORT</c> or <c>https://…</c>, a reverse proxy's as well).</summary>
    public required Uri Server { get; init; }

    /// <summary>The agent token (<c>kiln agent-token create</c>).</summary>
    public required string Token { get; init; }

    /// <summary>The agent's name in the server's records; one session per name.</summary>
    public required string Name { get; init; }

    public IReadOnlyList<string> Systems { get; init; } = ["x86_64-linux"];

    public IReadOnlyList<string> Features { get; init; } = [];

    public int Slots { get; init; } = 1;

    public int Cores { get; init; } = Environment.ProcessorCount;

    public long MemoryBytes { get; init; }

    /// <summary>Where output NARs are spooled before they are put.</summary>
    public required string SpoolDirectory { get; init; }

    /// <summary>A CA certificate (PEM) the server's TLS certificate must chain to, instead of the system's trust store.</summary>
    public string? CaCertificate { get; init; }

    /// <summary>The size of the executor's unpacked inputs, reported to the server.</summary>
    public Func<long>? InputCacheBytes { get; init; }
}

/// <summary>
/// <c>kiln agent</c>: runs builds for a Kiln server it dials out to (no port is opened here). One claim loop per
/// slot long-polls the server for a job, runs it with the local executor (the same sandbox as the embedded agent),
/// sends the log as it comes, puts the outputs and reports the outcome; a heartbeat keeps its leases and learns which
/// to stop. When the server cannot be reached it tries again, with back-off, for ever: builds it was running are
/// reported when it can, or given up by the server and run elsewhere.
/// </summary>
public sealed partial class RemoteAgent : IAsyncDisposable
{
    private readonly RemoteAgentOptions _options;
    private readonly ILogger _logger;
    private readonly HttpClient _http;
    private readonly RemoteAgentStore _store;
    private readonly IBuildExecutor _executor;
    private readonly ConcurrentDictionary<string, CancellationTokenSource> _running = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _helloGate = new(1, 1);
    private volatile WelcomeMessage? _welcome;
    private long _builds;

    public RemoteAgent(RemoteAgentOptions options, Func<IAgentStore, IBuildExecutor> executor, ILogger logger, HttpMessageHandler? handler = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(executor);
        _options = options;
        _logger = logger;
        _http = new HttpClient(handler ?? Handler(options))
        {
            BaseAddress = new Uri(options.Server, AgentWire.Root + "/"),
            Timeout = Timeout.InfiniteTimeSpan, // long polls and large NARs; control requests have their own limits
        };
        _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", options.Token);
        _store = new RemoteAgentStore(this, options.SpoolDirectory);
        _executor = executor(_store);
    }

    private static SocketsHttpHandler Handler(RemoteAgentOptions options)
    {
        var handler = new SocketsHttpHandler { PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30), ConnectTimeout = TimeSpan.FromSeconds(10) };
        if (options.CaCertificate is { } file)
        {
            // A private CA: the server's certificate must chain to it (and name the host), and to nothing else.
            System.Security.Cryptography.X509Certificates.X509Certificate2 authority;
            try
            {
                authority = System.Security.Cryptography.X509Certificates.X509CertificateLoader.LoadCertificateFromFile(file);
            }
            catch (System.Security.Cryptography.CryptographicException e)
            {
                throw new ArgumentException($"cannot read the CA certificate {file}: {e.Message}", e);
            }

            handler.SslOptions.CertificateChainPolicy = new System.Security.Cryptography.X509Certificates.X509ChainPolicy
            {
                TrustMode = System.Security.Cryptography.X509Certificates.X509ChainTrustMode.CustomRootTrust,
                CustomTrustStore = { authority },
                RevocationMode = System.Security.Cryptography.X509Certificates.X509RevocationMode.NoCheck,
            };
        }

        return handler;
    }

    /// <summary>Builds run to an outcome the server accepted.</summary>
    public long BuildsRun => Interlocked.Read(ref _builds);

    /// <summary>Runs until <paramref name="cancellationToken"/> fires; then gives back the builds still running.</summary>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        await HelloAsync(null, cancellationToken).ConfigureAwait(false);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var loops = Enumerable.Range(0, _options.Slots).Select(_ => Task.Run(() => ClaimLoopAsync(stop.Token), CancellationToken.None)).ToList();
        loops.Add(Task.Run(() => HeartbeatLoopAsync(stop.Token), CancellationToken.None));
        await Task.WhenAll(loops).ConfigureAwait(false);
    }

    // Says hello (again, when the server forgot the session): one at a time, and not again if another slot just did.
    private async Task HelloAsync(WelcomeMessage? stale, CancellationToken cancellationToken)
    {
        await _helloGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_welcome is not null && _welcome != stale)
            {
                return;
            }

            var hello = new HelloMessage(_options.Name, _options.Systems, _options.Features, _options.Slots, _options.Cores, _options.MemoryBytes, 0,
                typeof(RemoteAgent).Assembly.GetName().Version?.ToString() ?? "");
            var delay = TimeSpan.FromSeconds(1);
            while (true)
            {
                try
                {
                    using var response = await SendAsync(HttpMethod.Post, "hello", JsonContent.Create(hello, AgentJson.Default.HelloMessage), TimeSpan.FromSeconds(30),
                        cancellationToken).ConfigureAwait(false);
                    if (response.StatusCode == HttpStatusCode.Unauthorized)
                    {
                        throw new KilnException(ErrorKind.Forbidden, $"the server at {_options.Server} refused the agent token (wrong or revoked)");
                    }

                    if (response.StatusCode == HttpStatusCode.NotFound)
                    {
                        throw new KilnException(ErrorKind.NotFound, $"there is no Kiln agent listener at {_options.Server} (the server may take agents on its --agent-listen address)");
                    }

                    await EnsureSuccessAsync(response, cancellationToken).ConfigureAwait(false);
                    _welcome = await ReadAsync(response, AgentJson.Default.WelcomeMessage, cancellationToken).ConfigureAwait(false);
                    LogConnected(_logger, _options.Server, _options.Name, _options.Slots);
                    return;
                }
                catch (Exception e) when (IsTransient(e, cancellationToken))
                {
                    LogUnreachable(_logger, _options.Server, e.Message, (int)delay.TotalSeconds);
                    await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
                    delay = TimeSpan.FromSeconds(Math.Min(15, delay.TotalSeconds * 2));
                }
            }
        }
        finally
        {
            _helloGate.Release();
        }
    }

    private async Task ClaimLoopAsync(CancellationToken stop)
    {
        var delay = TimeSpan.FromSeconds(1);
        while (!stop.IsCancellationRequested)
        {
            var session = _welcome!;
            try
            {
                using var response = await SendAsync(HttpMethod.Post, "claim", null, TimeSpan.FromMinutes(2), stop).ConfigureAwait(false);
                if (response.StatusCode == HttpStatusCode.NotFound)
                {
                    await HelloAsync(session, stop).ConfigureAwait(false);
                    continue;
                }

                await EnsureSuccessAsync(response, stop).ConfigureAwait(false);
                delay = TimeSpan.FromSeconds(1);
                if (response.StatusCode == HttpStatusCode.NoContent)
                {
                    continue;
                }

                var job = await ReadAsync(response, AgentJson.Default.JobMessage, stop).ConfigureAwait(false);
                await RunLeaseAsync(job, stop).ConfigureAwait(false);
            }
            catch (Exception e) when (IsTransient(e, stop))
            {
                LogUnreachable(_logger, _options.Server, e.Message, (int)delay.TotalSeconds);
                await Task.Delay(delay, stop).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
                delay = TimeSpan.FromSeconds(Math.Min(15, delay.TotalSeconds * 2));
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // a refusal or a bug must not end this slot for good: it is logged and the slot goes on
            catch (Exception e) when (!stop.IsCancellationRequested)
#pragma warning restore CA1031
            {
                LogSlotFailed(_logger, e.Message);
                await Task.Delay(delay, stop).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
                delay = TimeSpan.FromSeconds(Math.Min(15, delay.TotalSeconds * 2));
            }
        }
    }

    private static async Task CancelQuietlyAsync(CancellationTokenSource source)
    {
        try
        {
            await source.CancelAsync().ConfigureAwait(false);
        }
        catch (ObjectDisposedException)
        {
            // that build has just ended
        }
    }

    private async Task RunLeaseAsync(JobMessage message, CancellationToken stop)
    {
        BuildJob job;
        try
        {
            job = AgentWire.ToJob(message);
        }
        catch (Exception e) when (e is Kiln.Nix.NixFormatException or FormatException)
        {
            await GiveBackAsync(message.Lease, $"the job could not be read: {e.Message}").ConfigureAwait(false);
            return;
        }

        using var build = CancellationTokenSource.CreateLinkedTokenSource(stop);
        _running[message.Lease] = build;
        LogBuilding(_logger, job.DrvPath.FullPath, message.BuildId);
        var log = new RemoteBuildLog(this, message.Lease);
        BuildOutcome outcome;
        try
        {
            using (_store.Lease(message.Lease, job))
            {
                log.Running();
                outcome = await _executor.BuildAsync(job, log, build.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            outcome = BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"the build of '{job.DrvPath}' was cancelled");
        }
#pragma warning disable CA1031 // a failure of the agent is reported as the job given back, and the agent goes on
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogBuildFailed(_logger, job.DrvPath.FullPath, e);
            await log.DisposeAsync().ConfigureAwait(false);
            await GiveBackAsync(message.Lease, $"the agent failed: {e.Message}").ConfigureAwait(false);
            _running.TryRemove(message.Lease, out _);
            return;
        }

        await log.DisposeAsync().ConfigureAwait(false);
        try
        {
            if (stop.IsCancellationRequested)
            {
                // The agent is stopping: the job goes back to the queue, to run elsewhere.
                await GiveBackAsync(message.Lease, "the agent is stopping").ConfigureAwait(false);
                return;
            }

            // Heartbeats go on for the lease until the server has the outcome (a report retried for a while must
            // not find its lease taken back for want of them).
            await CompleteAsync(message.Lease, outcome).ConfigureAwait(false);
        }
        finally
        {
            _running.TryRemove(message.Lease, out _);
        }

        LogBuilt(_logger, job.DrvPath.FullPath, outcome.Succeeded ? "built" : $"failed ({outcome.Failure})");
    }

    // Reports an outcome, trying a while if the server is away: the lease may still be there when it is back.
    private async Task CompleteAsync(string lease, BuildOutcome outcome)
    {
        var content = JsonSerializer.SerializeToUtf8Bytes(AgentWire.ToMessage(outcome), AgentJson.Default.OutcomeMessage);
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                using var response = await SendAsync(HttpMethod.Post, $"leases/{lease}/complete", Json(content), TimeSpan.FromSeconds(60), CancellationToken.None)
                    .ConfigureAwait(false);
                if (response.StatusCode == HttpStatusCode.Gone)
                {
                    LogLeaseGone(_logger, lease);
                    return;
                }

                await EnsureSuccessAsync(response, CancellationToken.None).ConfigureAwait(false);
                Interlocked.Increment(ref _builds);
                return;
            }
            catch (Exception e) when (IsTransient(e, CancellationToken.None) && attempt < 10)
            {
                await Task.Delay(TimeSpan.FromSeconds(Math.Min(15, 1 << attempt))).ConfigureAwait(false);
            }
        }
    }

    private async Task GiveBackAsync(string lease, string reason)
    {
        try
        {
            using var response = await SendAsync(HttpMethod.Post, $"leases/{lease}/abandon", JsonContent.Create(new AbandonMessage(reason), AgentJson.Default.AbandonMessage),
                TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (IsTransient(e, CancellationToken.None))
        {
            // The lease lapses on the server instead.
        }
    }

    private async Task HeartbeatLoopAsync(CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            var session = _welcome!;
            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(session.HeartbeatMilliseconds), stop).ConfigureAwait(false);
                var beat = new HeartbeatMessage(_running.Keys.ToList(), _running.Count, _options.InputCacheBytes?.Invoke() ?? 0);
                using var response = await SendAsync(HttpMethod.Post, "heartbeat", JsonContent.Create(beat, AgentJson.Default.HeartbeatMessage),
                    TimeSpan.FromMilliseconds(session.LeaseMilliseconds / 2.0), stop).ConfigureAwait(false);
                if (response.StatusCode == HttpStatusCode.NotFound)
                {
                    // The server dropped this agent (lost, or restarted): its leases are gone; stop their builds.
                    foreach (var running in _running.Values)
                    {
                        await CancelQuietlyAsync(running).ConfigureAwait(false);
                    }

                    await HelloAsync(session, stop).ConfigureAwait(false);
                    continue;
                }

                await EnsureSuccessAsync(response, stop).ConfigureAwait(false);
                var reply = await ReadAsync(response, AgentJson.Default.HeartbeatReply, stop).ConfigureAwait(false);
                foreach (var lease in reply.Stop)
                {
                    if (_running.TryGetValue(lease, out var running))
                    {
                        LogStopping(_logger, lease);
                        await CancelQuietlyAsync(running).ConfigureAwait(false);
                    }
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (IsTransient(e, stop))
            {
                LogUnreachable(_logger, _options.Server, e.Message, session.HeartbeatMilliseconds / 1000);
            }
        }
    }

    internal async Task<HttpResponseMessage> SendAsync(HttpMethod method, string path, HttpContent? content, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var request = new HttpRequestMessage(method, path) { Content = content };
        if (_welcome is { } session)
        {
            request.Headers.Add(AgentWire.SessionHeader, session.Session);
        }

        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(timeout);
        try
        {
            return await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, limit.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"{method} {path}: no answer from {_options.Server} within {timeout.TotalSeconds:0} s");
        }
    }

    internal static ByteArrayContent Json(byte[] content)
    {
        var body = new ByteArrayContent(content);
        body.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        return body;
    }

    internal static async Task EnsureSuccessAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        if (response.IsSuccessStatusCode)
        {
            return;
        }

        var text = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        string message;
        try
        {
            message = JsonSerializer.Deserialize(text, AgentJson.Default.ErrorMessage)?.Error ?? text;
        }
        catch (JsonException)
        {
            message = text.Length > 200 ? text[..200] : text;
        }

        var status = (int)response.StatusCode;
        throw status >= 500 || status is 408 or 429
            ? new HttpRequestException($"the server answered {status}: {message}", null, response.StatusCode)
            : new KilnException(status == 403 ? ErrorKind.Forbidden : ErrorKind.Invalid, $"the server refused: {status} {message}");
    }

    private static async Task<T> ReadAsync<T>(HttpResponseMessage response, JsonTypeInfo<T> type, CancellationToken cancellationToken) =>
        await response.Content.ReadFromJsonAsync(type, cancellationToken).ConfigureAwait(false) ?? throw new JsonException("the server sent null");

    // Network trouble, the server's own failures and timeouts are waited out; a refusal is not.
    internal static bool IsTransient(Exception e, CancellationToken cancellationToken) =>
        !cancellationToken.IsCancellationRequested && e is HttpRequestException or TimeoutException or IOException or JsonException;

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        _helloGate.Dispose();
        await Task.CompletedTask.ConfigureAwait(false);
    }

    [LoggerMessage(EventId = LogEvents.AgentConnected, Level = LogLevel.Information, Message = "agent {Name}: connected to {Server}, {Slots} slots")]
    private static partial void LogConnected(ILogger logger, Uri server, string name, int slots);

    [LoggerMessage(EventId = LogEvents.AgentServerUnreachable, Level = LogLevel.Warning, Message = "the server at {Server} cannot be reached ({Reason}); trying again in {Seconds} s")]
    private static partial void LogUnreachable(ILogger logger, Uri server, string reason, int seconds);

    [LoggerMessage(EventId = LogEvents.AgentFailed, Level = LogLevel.Error, Message = "the build of {DrvPath} failed inside the agent")]
    private static partial void LogBuildFailed(ILogger logger, string drvPath, Exception exception);

    [LoggerMessage(EventId = LogEvents.AgentLost, Level = LogLevel.Warning, Message = "lease {Lease} was taken back by the server before the outcome arrived; the outcome is dropped")]
    private static partial void LogLeaseGone(ILogger logger, string lease);

    [LoggerMessage(EventId = LogEvents.AgentFailed, Level = LogLevel.Warning, Message = "a build slot failed ({Reason}); it goes on")]
    private static partial void LogSlotFailed(ILogger logger, string reason);

    [LoggerMessage(EventId = LogEvents.AgentBuilding, Level = LogLevel.Information, Message = "building {DrvPath} (build {BuildId})")]
    private static partial void LogBuilding(ILogger logger, string drvPath, long buildId);

    [LoggerMessage(EventId = LogEvents.AgentBuilt, Level = LogLevel.Information, Message = "{DrvPath}: {How}")]
    private static partial void LogBuilt(ILogger logger, string drvPath, string how);

    [LoggerMessage(EventId = LogEvents.AgentStopped, Level = LogLevel.Information, Message = "the server asked to stop the build of lease {Lease}")]
    private static partial void LogStopping(ILogger logger, string lease);
}
