using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text.Json;
using Kiln.Agent;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Scheduler.Queue;
using Kiln.Store.Accounts;
using Kiln.Store.Blobs;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Kiln.Farm;

/// <summary>How the gateway treats agents.</summary>
public sealed record AgentGatewayOptions
{
    /// <summary>This front door's name, recorded with each agent connected to it.</summary>
    public required string FrontDoor { get; init; }

    /// <summary>An agent not heard from for this long is lost: its leases are taken back and its jobs run elsewhere.</summary>
    public TimeSpan AgentTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How long a claim waits for work before the agent asks again (under a reverse proxy's read timeout).</summary>
    public TimeSpan PollTime { get; init; } = TimeSpan.FromSeconds(20);

    /// <summary>The largest output NAR an agent may put.</summary>
    public long MaxNarSize { get; init; } = long.MaxValue;

    /// <summary>
    /// How long a token's lookup is reused (every heartbeat and log batch carries the token): a revocation takes
    /// effect within this.
    /// </summary>
    public TimeSpan TokenCacheTime { get; init; } = TimeSpan.FromSeconds(5);
}

/// <summary>
/// The server's side of the agent protocol, inside the HTTP front door (<see cref="AgentWire.Root"/>). An agent says
/// hello with its token and gets a session; it claims jobs by long-polling (the claim is the job queue's, made for the
/// agent as the embedded agent makes its own), heartbeats the leases it holds, sends log lines, fetches the input NARs
/// its leases name (and nothing else), puts its output NARs (validated, hashed and scanned for references as they
/// stream) and reports the outcome, which is accepted only when every output it names was put under that lease and
/// matches. A session not heard from for <see cref="AgentGatewayOptions.AgentTimeout"/> is dropped and its leases
/// given back, so their jobs run on another agent. A malformed message ends that agent's session, nothing else.
/// </summary>
public sealed partial class AgentGateway : IAsyncDisposable
{
    private readonly IJobQueue _queue;
    private readonly IAgentMetadata _agents;
    private readonly IBlobStore _blobs;
    private readonly AgentGatewayOptions _options;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<string, Session> _sessions = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, (AgentTokenRecord? Token, long Until)> _tokens = new(StringComparer.Ordinal);
    private readonly CancellationTokenSource _stopping = new();
    private readonly Timer _sweep;

    public AgentGateway(IJobQueue queue, IAgentMetadata agents, IBlobStore blobs, AgentGatewayOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        _queue = queue;
        _agents = agents;
        _blobs = blobs;
        _options = options;
        _logger = logger;
        var period = options.AgentTimeout / 4;
        _sweep = new Timer(_ => _ = SweepAsync(), null, period, period);
    }

    // What each agent (by name) is known to hold in its input cache: the NARs it fetched and the outputs it put (it
    // keeps those unpacked too). An estimate: the agent trims its cache without saying so; bounded per agent.
    private readonly ConcurrentDictionary<string, ConcurrentDictionary<NixHash, long>> _held = new(StringComparer.Ordinal);
    private const int MaxHeldPerAgent = 200_000;

    /// <summary>How many bytes of the job's inputs the agent is known to hold (for the queue's placement).</summary>
    public long CachedBytes(AgentInfo agent, JobOffer offer)
    {
        ArgumentNullException.ThrowIfNull(agent);
        ArgumentNullException.ThrowIfNull(offer);
        if (!_held.TryGetValue(agent.Name, out var held) || held.IsEmpty)
        {
            return 0;
        }

        long bytes = 0;
        foreach (var input in offer.Job.Inputs)
        {
            if (held.ContainsKey(input.NarHash))
            {
                bytes += input.NarSize;
            }
        }

        return bytes;
    }

    private void Holds(string agent, NixHash narHash, long size)
    {
        var held = _held.GetOrAdd(agent, _ => new ConcurrentDictionary<NixHash, long>());
        if (held.Count >= MaxHeldPerAgent)
        {
            held.Clear(); // a rough forgetting: placement is a preference, never a promise
        }

        held[narHash] = size;
    }

    /// <summary>Whether a request is for the gateway (the rest of the HTTP front is the binary cache's).</summary>
    public static bool Handles(HttpContext context) => context?.Request.Path.StartsWithSegments(AgentWire.Root, StringComparison.Ordinal) == true;

    /// <summary>The agents connected now.</summary>
    public IReadOnlyList<AgentRecord> Connected => _sessions.Values.Select(s => s.Record()).ToList();

    public async Task HandleAsync(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        AgentTokenRecord? token;
        try
        {
            token = await AuthenticateAsync(context).ConfigureAwait(false);
        }
        catch (Exception e) when (StorageFailure.Describe(e) is { } why)
        {
            await ErrorAsync(context, StatusCodes.Status503ServiceUnavailable, $"the server cannot check agent tokens now: {why}").ConfigureAwait(false);
            return;
        }

        if (token is null)
        {
            await ErrorAsync(context, StatusCodes.Status401Unauthorized, "the agent token is missing, wrong or revoked").ConfigureAwait(false);
            return;
        }

        var path = context.Request.Path.Value![AgentWire.Root.Length..];
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        var method = context.Request.Method;
        Session? session = null;
        try
        {
            if (parts is ["hello"] && method == "POST")
            {
                await HelloAsync(context, token).ConfigureAwait(false);
                return;
            }

            session = FindSession(context, token);
            if (session is null)
            {
                // The agent says hello again (this front door restarted, or dropped it as lost).
                await ErrorAsync(context, StatusCodes.Status404NotFound, "unknown session").ConfigureAwait(false);
                return;
            }

            session.Seen();
            switch (parts)
            {
                case ["claim"] when method == "POST":
                    await ClaimAsync(context, session).ConfigureAwait(false);
                    return;
                case ["heartbeat"] when method == "POST":
                    await HeartbeatAsync(context, session).ConfigureAwait(false);
                    return;
                case ["leases", var id, .. var rest]:
                    if (session.Leases.TryGetValue(id, out var ended) && !ended.Lease.IsCurrent)
                    {
                        session.Leases.TryRemove(id, out _); // taken back by the queue (lapsed, or given to another agent)
                    }

                    if (!session.Leases.TryGetValue(id, out var lease))
                    {
                        // Taken back (the agent was lost, or gave it up): whatever it brings now is discarded.
                        await ErrorAsync(context, StatusCodes.Status410Gone, "the lease is no longer this agent's").ConfigureAwait(false);
                        return;
                    }

                    await LeaseAsync(context, session, lease, method, rest).ConfigureAwait(false);
                    return;
                default:
                    await ErrorAsync(context, StatusCodes.Status404NotFound, $"no such agent request: {method} {path}").ConfigureAwait(false);
                    return;
            }
        }
        catch (Exception e) when (e is JsonException or FormatException or Kiln.Nix.NixFormatException or ArgumentException or InvalidDataException)
        {
            // A malformed message: this agent is out of step with the protocol. Its session ends (its leases go back to
            // the queue); nothing else is touched.
            LogMisbehaved(_logger, session?.Name ?? token.Name, e.Message);
            if (session is not null)
            {
                Drop(session, $"agent {session.Name} sent a malformed message");
            }

            await ErrorAsync(context, StatusCodes.Status400BadRequest, $"malformed message: {e.Message}").ConfigureAwait(false);
        }
        catch (KilnException e)
        {
            await ErrorAsync(context, ErrorKinds.HttpStatus(e.Kind), e.Message).ConfigureAwait(false);
        }
    }

    // Agents one token may have connected at once (an autoscaling group shares a token; a runaway script must not
    // register thousands of agents with the queue).
    private const int MaxSessionsPerToken = 1024;

    // The token from "Authorization: Bearer …", looked up by hash; answers are kept for TokenCacheTime.
    private async Task<AgentTokenRecord?> AuthenticateAsync(HttpContext context)
    {
        var header = context.Request.Headers.Authorization.ToString();
        const string bearer = "Bearer ";
        if (!header.StartsWith(bearer, StringComparison.Ordinal) || !AgentToken.LooksValid(header[bearer.Length..].Trim()))
        {
            return null;
        }

        var hash = AgentToken.Hash(header[bearer.Length..].Trim());
        var now = Environment.TickCount64;
        if (_tokens.TryGetValue(hash, out var cached) && cached.Until > now)
        {
            return cached.Token;
        }

        var token = await _agents.FindAgentTokenAsync(hash, context.RequestAborted).ConfigureAwait(false);
        if (token is null)
        {
            // Misses are not kept: a stranger's guesses must not grow the cache (each costs one indexed lookup).
            _tokens.TryRemove(hash, out _);
            LogRefused(_logger, context.Connection.RemoteIpAddress?.ToString() ?? "?");
            return null;
        }

        _tokens[hash] = (token, now + (long)_options.TokenCacheTime.TotalMilliseconds);
        return token;
    }

    private Session? FindSession(HttpContext context, AgentTokenRecord token) =>
        context.Request.Headers[AgentWire.SessionHeader].ToString() is { Length: > 0 } id && _sessions.TryGetValue(id, out var session) && session.TokenId == token.Id
            ? session
            : null;

    private async Task HelloAsync(HttpContext context, AgentTokenRecord token)
    {
        var hello = AgentWire.Read(await ReadMessageAsync(context, SmallMessage).ConfigureAwait(false), AgentJson.Default.HelloMessage);
        Validate(hello);
        var info = new AgentInfo(hello.Name, new SortedSet<string>(hello.Systems, StringComparer.Ordinal), new SortedSet<string>(hello.Features, StringComparer.Ordinal), hello.Slots)
        {
            MemoryBytes = Math.Max(0, hello.MemoryBytes),
        };

        // One session per agent name: an agent that restarted (or reconnects after a cut) replaces its old session,
        // whose leases go back to the queue now rather than when they lapse — but only an agent with the same token: a
        // name is not a credential, and one token's agents must not push out another's.
        Session session;
        lock (_sessions)
        {
            var same = _sessions.Values.Where(s => s.Name == hello.Name).ToList();
            if (same.Any(s => s.TokenId != token.Id))
            {
                throw new KilnException(ErrorKind.Conflict, $"an agent named {hello.Name} is connected with another token");
            }

            if (_sessions.Values.Count(s => s.TokenId == token.Id) - same.Count >= MaxSessionsPerToken)
            {
                throw new KilnException(ErrorKind.TooLarge, $"token {token.Name} has {MaxSessionsPerToken} agents connected already");
            }

            foreach (var old in same)
            {
                Drop(old, $"agent {hello.Name} connected again");
            }

            session = new Session(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)), token, hello, info, _queue.Register(info));
            _sessions[session.Id] = session;
        }

        LogConnected(_logger, hello.Name, token.Name, info, hello.Slots, context.Connection.RemoteIpAddress);
        await ReportAsync(session, CancellationToken.None).ConfigureAwait(false);
        await WriteAsync(context, new WelcomeMessage(session.Id, (int)(_options.AgentTimeout / 6).TotalMilliseconds, (int)_options.AgentTimeout.TotalMilliseconds),
            AgentJson.Default.WelcomeMessage).ConfigureAwait(false);
    }

    private static void Validate(HelloMessage hello)
    {
        static bool IsWord(string text) => text is { Length: > 0 and <= 64 } && text.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.');
        if (!IsWord(hello.Name))
        {
            throw new FormatException("an agent's name is 1 to 64 letters, digits, '-', '_' or '.'");
        }

        if (hello.Systems is null || hello.Systems.Count == 0 || hello.Systems.Count > 32 || !hello.Systems.All(IsWord))
        {
            throw new FormatException("an agent builds for 1 to 32 systems, each a word such as x86_64-linux");
        }

        if (hello.Features is null || hello.Features.Count > 64 || !hello.Features.All(IsWord))
        {
            throw new FormatException("an agent's features are at most 64 words such as kvm or big-parallel");
        }

        if (hello.Slots is < 1 or > 1024 || hello.Cores < 0 || hello.MemoryBytes < 0)
        {
            throw new FormatException("an agent has 1 to 1024 slots and no negative cores or memory");
        }
    }

    private async Task ClaimAsync(HttpContext context, Session session)
    {
        // No more jobs at once than the slots it said it has: one agent must not take the whole queue.
        if (!session.TryStartClaim())
        {
            context.Response.StatusCode = StatusCodes.Status204NoContent;
            return;
        }

        ILease claimed;
        try
        {
            using var poll = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted, session.Closed, _stopping.Token);
            poll.CancelAfter(_options.PollTime);
            claimed = await _queue.ClaimAsync(session.Info, poll.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            session.EndClaim();
            context.Response.StatusCode = StatusCodes.Status204NoContent;
            return;
        }

        var lease = new RemoteLease(Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16)), claimed);
        session.Leases[lease.Id] = lease;
        session.EndClaim();
        if (session.IsClosed)
        {
            // Dropped while the claim was answered: the job goes back as if never claimed.
            if (session.Leases.TryRemove(lease.Id, out _))
            {
                claimed.Release();
            }

            context.Response.StatusCode = StatusCodes.Status204NoContent;
            return;
        }

        try
        {
            await WriteAsync(context, AgentWire.ToMessage(lease.Id, claimed.Offer.BuildId, claimed.Offer.Job), AgentJson.Default.JobMessage).ConfigureAwait(false);
            await context.Response.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException)
        {
        }

        if (context.RequestAborted.IsCancellationRequested && session.Leases.TryRemove(lease.Id, out _))
        {
            // It never reached the agent: offer it again at once (not as another attempt) rather than when the lease lapses.
            claimed.Release();
        }
    }

    private async Task HeartbeatAsync(HttpContext context, Session session)
    {
        var beat = AgentWire.Read(await ReadMessageAsync(context, SmallMessage).ConfigureAwait(false), AgentJson.Default.HeartbeatMessage);
        var stop = new List<string>();
        var held = new HashSet<string>(beat.Leases ?? [], StringComparer.Ordinal);
        foreach (var id in held)
        {
            if (session.Leases.TryGetValue(id, out var lease) && lease.Lease.IsCurrent && !lease.Lease.Cancelled.IsCancellationRequested)
            {
                lease.Lease.Heartbeat();
            }
            else
            {
                // Cancelled (nobody waits for it: the agent stops it and reports), or no longer its: stop, and forget it.
                stop.Add(id);
                if (lease is not null && !lease.Lease.IsCurrent)
                {
                    session.Leases.TryRemove(id, out _);
                }
            }
        }

        // A lease the agent no longer mentions was lost on its side (it restarted a slot): the job runs elsewhere.
        foreach (var lease in session.Leases.Values.Where(l => !held.Contains(l.Id) && l.Age > _options.AgentTimeout))
        {
            GiveBack(session, lease, $"agent {session.Name} no longer has the job");
        }

        session.Update(beat.SlotsBusy, beat.InputCacheBytes);
        if (session.ReportDue())
        {
            await ReportAsync(session, context.RequestAborted).ConfigureAwait(false);
        }

        await WriteAsync(context, new HeartbeatReply(stop), AgentJson.Default.HeartbeatReply).ConfigureAwait(false);
    }

    private async Task LeaseAsync(HttpContext context, Session session, RemoteLease lease, string method, string[] rest)
    {
        var offer = lease.Lease.Offer;
        switch (rest)
        {
            case ["log"] when method == "POST":
                var log = AgentWire.Read(await ReadMessageAsync(context, LargeMessage).ConfigureAwait(false), AgentJson.Default.LogMessage);
                if (log.Running && lease.MarkRunning())
                {
                    offer.Log.Running();
                    offer.Log.Line(Placement.Line(session.Info, offer.Job));
                }

                foreach (var line in log.Lines ?? [])
                {
                    offer.Log.Line(line ?? "");
                }

                context.Response.StatusCode = StatusCodes.Status204NoContent;
                return;

            case ["nars", var hash] when method is "GET" or "HEAD":
                await SendInputAsync(context, session.Name, lease, hash).ConfigureAwait(false);
                return;

            case ["outputs", var hash] when method == "PUT":
                var put = await ReceiveOutputAsync(context, lease, hash).ConfigureAwait(false);
                Holds(session.Name, put.Hash, put.Size);
                return;

            case ["complete"] when method == "POST":
                var outcome = AgentWire.ToOutcome(AgentWire.Read(await ReadMessageAsync(context, LargeMessage).ConfigureAwait(false), AgentJson.Default.OutcomeMessage));
                if (lease.Check(ref outcome) is { } wrong)
                {
                    // The agent's report does not match what it put: not a build failure, an agent fault. The job goes
                    // back to the queue; the agent hears why.
                    LogMisbehaved(_logger, session.Name, wrong);
                    GiveBack(session, lease, $"agent {session.Name} reported outputs it did not deliver");
                    await ErrorAsync(context, StatusCodes.Status400BadRequest, wrong).ConfigureAwait(false);
                    return;
                }

                if (!session.Leases.TryRemove(lease.Id, out _) || !lease.Lease.Complete(outcome))
                {
                    await ErrorAsync(context, StatusCodes.Status410Gone, "the lease is no longer this agent's").ConfigureAwait(false);
                    return;
                }

                session.Finished();
                context.Response.StatusCode = StatusCodes.Status204NoContent;
                return;

            case ["abandon"] when method == "POST":
                var abandon = AgentWire.Read(await ReadMessageAsync(context, SmallMessage).ConfigureAwait(false), AgentJson.Default.AbandonMessage);
                GiveBack(session, lease, $"agent {session.Name} gave it back ({Truncate(abandon.Reason, 200)})");
                context.Response.StatusCode = StatusCodes.Status204NoContent;
                return;

            default:
                await ErrorAsync(context, StatusCodes.Status404NotFound, $"no such lease request: {method} {string.Join('/', rest)}").ConfigureAwait(false);
                return;
        }
    }

    // An input NAR, only if the lease's job names it: an agent reads what it builds with, not the store.
    private async Task SendInputAsync(HttpContext context, string agent, RemoteLease lease, string hash)
    {
        if (!TryParseNarHash(hash, out var narHash) || !lease.Inputs.Contains(narHash))
        {
            await ErrorAsync(context, StatusCodes.Status403Forbidden, "the lease names no input with this NAR hash").ConfigureAwait(false);
            return;
        }

        var source = await _blobs.OpenReadAsync(narHash, context.RequestAborted).ConfigureAwait(false);
        if (source is null)
        {
            await ErrorAsync(context, StatusCodes.Status404NotFound, $"the input NAR {hash} is missing from the store").ConfigureAwait(false);
            return;
        }

        await using (source.ConfigureAwait(false))
        {
            context.Response.ContentType = "application/x-nix-nar";
            context.Response.ContentLength = source.Length;
            if (context.Request.Method == "HEAD")
            {
                return;
            }

            Holds(agent, narHash, source.Length); // (as it is sent: an estimate for placement, not a promise)
            var stream = await source.OpenStreamAsync(context.RequestAborted).ConfigureAwait(false);
            await using (stream.ConfigureAwait(false))
            {
                try
                {
                    await stream.CopyToAsync(context.Response.Body, context.RequestAborted).ConfigureAwait(false);
                    KilnMetrics.BytesSent.Add(source.Length, KilnMetrics.ProtocolTag(KilnMetrics.Protocols.Agent));
                }
                catch (Exception e) when (e is IOException or OperationCanceledException && context.RequestAborted.IsCancellationRequested)
                {
                    // The agent went away mid-download: nothing to answer.
                    return;
                }
            }

        }
    }

    // An output NAR, streamed into a new blob: validated as a NAR, hashed (it must be the hash its URL names), its
    // content hash computed when the derivation fixes one, and scanned for the input and output paths it refers to.
    private async Task<(NixHash Hash, long Size)> ReceiveOutputAsync(HttpContext context, RemoteLease lease, string hash)
    {
        if (!TryParseNarHash(hash, out var expected))
        {
            throw new KilnException(ErrorKind.Invalid, "an output's URL ends with its NAR's SHA-256 in Nix's base-32");
        }

        // As many NARs as the derivation has outputs (the same one may be put again): no more.
        var derivation = lease.Lease.Offer.Job.Derivation;
        if (!lease.Uploaded.ContainsKey(expected) && lease.Uploaded.Count >= derivation.Outputs.Count)
        {
            throw new KilnException(ErrorKind.Conflict, $"this lease has had its {derivation.Outputs.Count} outputs put already");
        }

        // A fixed-output derivation has one output, whose content hash the derivation names; the hash is checked here
        // for the methods Kiln's agents build (flat and recursive), and an output of any other is refused at the end.
        var fixedHash = derivation.IsFixedOutput && derivation.Outputs.Values.Single().FixedHash is { Method: ContentAddressMethod.Flat or ContentAddressMethod.Recursive } f
            ? f : (ContentAddress?)null;
        var scanner = new Kiln.Nix.References.ReferenceScanner(lease.Candidates);
        var body = new ScanningStream(context.Request.Body, scanner);
        var nar = await NarIngest.IngestAsync(_blobs, body, fixedHash?.MethodAndAlgorithm, 0, _options.MaxNarSize, context.RequestAborted).ConfigureAwait(false);
        await using (nar.ConfigureAwait(false))
        {
            if (nar.NarHash != expected)
            {
                throw new KilnException(ErrorKind.Invalid, $"the NAR's SHA-256 is {nar.NarHash.ToNix32()}, not the {hash} its URL names");
            }

            if (fixedHash is { } wanted && nar.ContentHash != wanted.Hash)
            {
                throw new KilnException(ErrorKind.Invalid, $"the output has hash {nar.ContentHash}, not the {wanted.Hash} the derivation fixes");
            }

            await nar.CommitAsync(context.RequestAborted).ConfigureAwait(false);
            KilnMetrics.BytesReceived.Add(nar.NarSize, KilnMetrics.ProtocolTag(KilnMetrics.Protocols.Agent));
            lease.Uploaded[nar.NarHash] = new Upload(nar.NarSize, scanner.Found);
            context.Response.StatusCode = StatusCodes.Status204NoContent;
            return (nar.NarHash, nar.NarSize);
        }
    }

    private static bool TryParseNarHash(string text, out NixHash hash)
    {
        try
        {
            hash = NixHash.ParseUnprefixed(text, NixHashAlgorithm.Sha256);
            return true;
        }
        catch (Kiln.Nix.NixFormatException)
        {
            hash = default;
            return false;
        }
    }

    private static void GiveBack(Session session, RemoteLease lease, string reason)
    {
        if (session.Leases.TryRemove(lease.Id, out _))
        {
            lease.Lease.Abandon(reason);
        }
    }

    private void Drop(Session session, string reason)
    {
        if (!_sessions.TryRemove(session.Id, out _))
        {
            return;
        }

        session.Close();
        foreach (var lease in session.Leases.Values.ToList())
        {
            GiveBack(session, lease, reason);
        }

        _ = ReportAsync(session, CancellationToken.None);
    }

    private async Task SweepAsync()
    {
        foreach (var session in _sessions.Values.Where(s => s.SilentFor > _options.AgentTimeout).ToList())
        {
            LogLost(_logger, session.Name, (int)session.SilentFor.TotalSeconds, session.Leases.Count);
            Drop(session, $"agent {session.Name} stopped answering");
        }

        await Task.CompletedTask.ConfigureAwait(false);
    }

    private async Task ReportAsync(Session session, CancellationToken cancellationToken)
    {
        try
        {
            await _agents.ReportAgentAsync(session.Record() with { FrontDoor = _options.FrontDoor }, cancellationToken).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // the agents list is bookkeeping: a database hiccup must not break an agent's heartbeat
        catch (Exception e) when (e is not OperationCanceledException)
#pragma warning restore CA1031
        {
            LogMisbehaved(_logger, session.Name, $"its state could not be recorded: {StorageFailure.Describe(e) ?? e.GetType().Name}");
        }
    }

    // Control messages are small; a log batch or an outcome (with its log tail) may be larger. Bounded either way, so
    // an agent cannot make the server buffer much.
    private const int SmallMessage = 256 * 1024, LargeMessage = 8 << 20;

    private static async Task<byte[]> ReadMessageAsync(HttpContext context, int limit)
    {
        if (context.Request.ContentLength > limit)
        {
            throw new KilnException(ErrorKind.TooLarge, $"this message is at most {limit} bytes");
        }

        var buffer = new System.Buffers.ArrayBufferWriter<byte>(Math.Min(limit, 16 * 1024));
        int read;
        while ((read = await context.Request.Body.ReadAsync(buffer.GetMemory(16 * 1024), context.RequestAborted).ConfigureAwait(false)) > 0)
        {
            buffer.Advance(read);
            if (buffer.WrittenCount > limit)
            {
                throw new KilnException(ErrorKind.TooLarge, $"this message is at most {limit} bytes");
            }
        }

        return buffer.WrittenSpan.ToArray();
    }

    private static async Task WriteAsync<T>(HttpContext context, T message, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type,
        int status = StatusCodes.Status200OK)
    {
        context.Response.StatusCode = status;
        context.Response.ContentType = "application/json";
        await JsonSerializer.SerializeAsync(context.Response.Body, message, type, context.RequestAborted).ConfigureAwait(false);
    }

    private static async Task ErrorAsync(HttpContext context, int status, string message)
    {
        if (context.Response.HasStarted)
        {
            context.Abort();
            return;
        }

        try
        {
            await WriteAsync(context, new ErrorMessage(message), AgentJson.Default.ErrorMessage, status).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException)
        {
        }
    }

    private static string Truncate(string? text, int length) => text is null ? "" : text.Length <= length ? text : text[..length] + "…";

    /// <summary>Ends the claims agents are waiting in (the server is stopping: their long polls must not hold it up).</summary>
    public void Stop() => _stopping.Cancel();

    public async ValueTask DisposeAsync()
    {
        await _sweep.DisposeAsync().ConfigureAwait(false);
        await _stopping.CancelAsync().ConfigureAwait(false);
        foreach (var session in _sessions.Values.ToList())
        {
            Drop(session, "the Kiln server stopped");
        }

        _stopping.Dispose();
    }

    private sealed record Upload(long NarSize, IReadOnlySet<StorePath> Found);

    /// <summary>One job leased to a remote agent: what it may fetch, and what it put.</summary>
    private sealed class RemoteLease(string id, ILease lease)
    {
        private readonly long _since = Environment.TickCount64;
        private int _running;

        public string Id => id;

        public ILease Lease => lease;

        public HashSet<NixHash> Inputs { get; } = lease.Offer.Job.Inputs.Select(i => i.NarHash).ToHashSet();

        /// <summary>The paths an output may refer to that a scan can recognise (<see cref="BuildJob.ReferenceCandidates"/>).</summary>
        public IReadOnlyList<StorePath> Candidates { get; } = lease.Offer.Job.ReferenceCandidates();

        public ConcurrentDictionary<NixHash, Upload> Uploaded { get; } = new();

        public TimeSpan Age => TimeSpan.FromMilliseconds(Environment.TickCount64 - _since);

        public bool MarkRunning() => Interlocked.Exchange(ref _running, 1) == 0;

        /// <summary>
        /// Why the outcome cannot be accepted, or null. A success names each of the derivation's outputs once, each at
        /// its declared path, put under this lease with the size reported, and referring to exactly the inputs and
        /// outputs the scan found in it (content-addressed derivations are not built, so every path an output may
        /// name is one the scan looks for); a fixed output is of a method Kiln checks and refers to nothing. A failure
        /// names no outputs. The outcome returned carries the content addresses Kiln verified, not the agent's.
        /// </summary>
        public string? Check(ref BuildOutcome outcome)
        {
            var job = lease.Offer.Job;
            var derivation = job.Derivation;
            if (!outcome.Succeeded)
            {
                return outcome.Outputs.Count == 0 ? null : "a failed build reported outputs";
            }

            var names = outcome.Outputs.Select(o => o.Name).ToList();
            if (names.Count != names.Distinct(StringComparer.Ordinal).Count() || !names.ToHashSet(StringComparer.Ordinal).SetEquals(derivation.Outputs.Keys))
            {
                return $"a successful build of '{job.DrvPath}' reports outputs {{{string.Join(", ", names)}}}, not {{{string.Join(", ", derivation.Outputs.Keys)}}}";
            }

            var candidates = Candidates.ToHashSet();
            var verified = new List<BuiltOutput>();
            foreach (var output in outcome.Outputs)
            {
                var declared = derivation.Outputs[output.Name];
                if (declared.StorePath is not { } path || path != output.Path)
                {
                    return $"output '{output.Name}' is at {output.Path}, not at its declared path";
                }

                if (!Uploaded.TryGetValue(output.NarHash, out var upload) || upload.NarSize != output.NarSize)
                {
                    return $"output '{output.Name}' ({output.NarHash.ToNix32()}, {output.NarSize} bytes) was not put under this lease";
                }

                var references = output.References.ToHashSet();
                if (!references.SetEquals(upload.Found) || !references.IsSubsetOf(candidates))
                {
                    return $"output '{output.Name}' refers to {{{string.Join(", ", upload.Found.Order())}}}, not to what the agent reported";
                }

                ContentAddress? address = null;
                if (derivation.IsFixedOutput)
                {
                    if (declared.FixedHash.Method is not (ContentAddressMethod.Flat or ContentAddressMethod.Recursive))
                    {
                        return $"fixed output '{output.Name}' is {declared.FixedHash.Method}-addressed, which Kiln does not check";
                    }

                    if (references.Count > 0)
                    {
                        return $"fixed output '{output.Name}' refers to other store paths";
                    }

                    // Its path follows from its hash (checked as it was put): the derivation must name that path.
                    if (Kiln.Nix.StorePaths.StorePathComputer.MakeFixedOutputPath(Kiln.Nix.StorePaths.StorePathComputer.OutputPathName(derivation.Name, output.Name), declared.FixedHash) != path)
                    {
                        return $"fixed output '{output.Name}' is at {path}, not at the path its hash makes";
                    }

                    address = declared.FixedHash; // its content hash was checked as it was put
                }

                verified.Add(output with { ContentAddress = address, References = [.. output.References] });
            }

            outcome = outcome with { Outputs = verified };
            return null;
        }
    }

    /// <summary>An agent's connection: who it is, what it holds, when it was last heard from.</summary>
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "a CancellationTokenSource without timers holds nothing to release")]
    private sealed class Session(string id, AgentTokenRecord token, HelloMessage hello, AgentInfo info, IDisposable registration)
    {
        private readonly CancellationTokenSource _closed = new();
        private long _lastSeen = Environment.TickCount64;
        private long _lastReport = Environment.TickCount64;
        private int _busy;
        private long _inputCache = hello.InputCacheBytes;
        private long _buildsRun;

        public string Id => id;

        public string Name => hello.Name;

        public long TokenId => token.Id;

        public AgentInfo Info => info;

        public ConcurrentDictionary<string, RemoteLease> Leases { get; } = new(StringComparer.Ordinal);

        public CancellationToken Closed => _closed.Token;

        public bool IsClosed => _closed.IsCancellationRequested;

        public TimeSpan SilentFor => TimeSpan.FromMilliseconds(Environment.TickCount64 - Interlocked.Read(ref _lastSeen));

        public void Seen() => Interlocked.Exchange(ref _lastSeen, Environment.TickCount64);

        public void Update(int busy, long inputCache)
        {
            _busy = busy;
            Interlocked.Exchange(ref _inputCache, inputCache);
        }

        public void Finished() => Interlocked.Increment(ref _buildsRun);

        private int _claiming;

        /// <summary>Starts a claim unless the agent's slots are all taken by its leases and the claims it has waiting.</summary>
        public bool TryStartClaim()
        {
            if (Interlocked.Increment(ref _claiming) + Leases.Count > hello.Slots)
            {
                Interlocked.Decrement(ref _claiming);
                return false;
            }

            return true;
        }

        public void EndClaim() => Interlocked.Decrement(ref _claiming);

        // The agents table is written on hello, on loss, and at most every ten seconds in between.
        public bool ReportDue()
        {
            var last = Interlocked.Read(ref _lastReport);
            return Environment.TickCount64 - last > 10_000 && Interlocked.CompareExchange(ref _lastReport, Environment.TickCount64, last) == last;
        }

        public void Close()
        {
            registration.Dispose();
            _closed.Cancel();
        }

        public AgentRecord Record() => new()
        {
            Name = hello.Name,
            TokenName = token.Name,
            Systems = info.Systems.ToList(),
            Features = info.Features.ToList(),
            Slots = hello.Slots,
            SlotsBusy = _busy,
            Cores = hello.Cores,
            MemoryBytes = hello.MemoryBytes,
            InputCacheBytes = Interlocked.Read(ref _inputCache),
            BuildsRun = Interlocked.Read(ref _buildsRun),
            LastSeen = DateTimeOffset.UtcNow.ToUnixTimeSeconds() - (long)SilentFor.TotalSeconds,
            Connected = !IsClosed,
        };
    }

    [LoggerMessage(EventId = LogEvents.AgentConnected, Level = LogLevel.Information, Message = "agent {Name} connected with token {Token}: builds for {What}, {Slots} at a time (from {Address})")]
    private static partial void LogConnected(ILogger logger, string name, string token, AgentInfo what, int slots, System.Net.IPAddress? address);

    [LoggerMessage(EventId = LogEvents.AgentLost, Level = LogLevel.Warning, Message = "agent {Name} lost: not heard from for {Seconds} s; its {Leases} builds go to other agents")]
    private static partial void LogLost(ILogger logger, string name, int seconds, int leases);

    [LoggerMessage(EventId = LogEvents.AgentRefused, Level = LogLevel.Warning, Message = "agent refused: a missing, wrong or revoked agent token (from {Address})")]
    private static partial void LogRefused(ILogger logger, string address);

    [LoggerMessage(EventId = LogEvents.AgentMisbehaved, Level = LogLevel.Warning, Message = "agent {Name}: {What}")]
    private static partial void LogMisbehaved(ILogger logger, string name, string what);
}
