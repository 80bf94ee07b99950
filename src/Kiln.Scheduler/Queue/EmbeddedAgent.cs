using Kiln.Agent;
using Kiln.Protocol;
using Microsoft.Extensions.Logging;

namespace Kiln.Scheduler.Queue;

/// <summary>
/// The agent inside <c>kiln serve</c>: it pulls work from the job queue exactly as a remote agent will — one claim
/// loop per slot, each leasing a job it can run, heartbeating while the executor builds it, then reporting the
/// outcome. Stopping it stops claiming and cancels the builds it runs (each reports its cancelled outcome).
/// </summary>
public sealed partial class EmbeddedAgent : IAsyncDisposable
{
    private readonly IJobQueue _queue;
    private readonly IBuildExecutor _executor;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task[] _loops;
    private readonly Lock _registrationGate = new();
    private IDisposable? _registration; // null while suspended: the queue does not count on this agent
    private long _suspendedUntil; // Environment.TickCount64
    private int _unavailableInARow; // executor-unavailable failures since the last build it ran

    public EmbeddedAgent(IJobQueue queue, IBuildExecutor executor, AgentInfo info, ILogger logger, TimeSpan heartbeat)
    {
        ArgumentNullException.ThrowIfNull(queue);
        ArgumentNullException.ThrowIfNull(info);
        _queue = queue;
        _executor = executor;
        _logger = logger;
        Info = info;
        Heartbeat = heartbeat;
        _registration = queue.Register(info);
        _loops = Enumerable.Range(0, Math.Max(1, info.Slots)).Select(_ => Task.Run(ClaimLoopAsync)).ToArray();
        LogStarted(logger, info.Name, info, info.Slots);
    }

    public AgentInfo Info { get; }

    public TimeSpan Heartbeat { get; }

    /// <summary>When the agent stops, its running builds go back to the queue (uncounted) rather than end cancelled.</summary>
    public bool ReleaseOnStop { get; init; }

    private async Task ClaimLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            ILease lease;
            try
            {
                await ResumeAsync().ConfigureAwait(false);
                lease = await _queue.ClaimAsync(Info, _stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            if (Suspended)
            {
                lease.Release(); // handed over while another slot found the executor unavailable
                continue;
            }

            await RunAsync(lease).ConfigureAwait(false);
        }
    }

    private bool Suspended => Environment.TickCount64 < Interlocked.Read(ref _suspendedUntil);

    // An executor that is unavailable (its builder unreachable) withdraws the agent from the queue for a while,
    // doubling from 2 s to a minute while it stays so: jobs only it could run then wait as for any missing agent
    // (and fail after the queue's placement wait), rather than spend their attempts on it.
    private void Suspend()
    {
        var failures = Interlocked.Increment(ref _unavailableInARow);
        Interlocked.Exchange(ref _suspendedUntil, Environment.TickCount64 + (long)Math.Min(60_000, 1000 << Math.Min(failures, 6)));
        lock (_registrationGate)
        {
            _registration?.Dispose();
            _registration = null;
        }
    }

    // Waits out a suspension, then makes sure the agent is registered (the next job it gets is the probe).
    private async Task ResumeAsync()
    {
        var wait = Interlocked.Read(ref _suspendedUntil) - Environment.TickCount64;
        if (wait > 0)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(wait), _stop.Token).ConfigureAwait(false);
        }

        lock (_registrationGate)
        {
            _registration ??= _queue.Register(Info);
        }
    }

    private async Task RunAsync(ILease lease)
    {
        var job = lease.Offer.Job;
        using var build = CancellationTokenSource.CreateLinkedTokenSource(lease.Cancelled, _stop.Token);
        using var beating = new CancellationTokenSource();
        var heartbeats = BeatAsync(lease, beating.Token);
        BuildOutcome outcome;
        ExecutorUnavailableException? unavailable = null;
        var released = false;
        try
        {
            lease.Offer.Log.Running();
            if (Info.StockBuilder)
            {
                lease.Offer.Log.Line(Placement.Line(Info, job)); // (the embedded agent's own builds need no such line)
            }
            outcome = await _executor.BuildAsync(job, lease.Offer.Log, build.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ReleaseOnStop && _stop.IsCancellationRequested && !lease.Cancelled.IsCancellationRequested)
        {
            // This agent stops (its builder was removed), not the build: it goes back to the queue, not counted.
            outcome = null!;
            released = true;
        }
        catch (OperationCanceledException)
        {
            outcome = BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"the build of '{job.DrvPath}' was cancelled");
        }
        catch (ExecutorUnavailableException e)
        {
            LogUnavailable(_logger, Info.Name, job.DrvPath.FullPath, e.Detail);
            outcome = null!;
            unavailable = e;
        }

#pragma warning disable CA1031 // an agent's failure is the build's, reported; the agent goes on
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogFailed(_logger, job.DrvPath.FullPath, e);
            outcome = BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"Kiln failed to build '{job.DrvPath}': {Kiln.Protocol.StorageFailure.Describe(e) ?? "an internal error (the server's log says more)"}");
        }
        finally
        {
            await beating.CancelAsync().ConfigureAwait(false);
            await heartbeats.ConfigureAwait(false);
        }

        if (released)
        {
            lease.Release();
            return;
        }

        if (unavailable is not null)
        {
            if (unavailable.Counted)
            {
                lease.Abandon(unavailable.Message); // another attempt, here or on another agent
                return;
            }

            Suspend(); // first, so the job given back does not come straight back here
            lease.Release(); // nothing was tried: not an attempt
            return;
        }

        Interlocked.Exchange(ref _unavailableInARow, 0);
        lease.Complete(outcome);
    }

    private async Task BeatAsync(ILease lease, CancellationToken done)
    {
        try
        {
            while (true)
            {
                await Task.Delay(Heartbeat, done).ConfigureAwait(false);
                lease.Heartbeat();
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(_loops).ConfigureAwait(false);
        lock (_registrationGate)
        {
            _registration?.Dispose();
            _registration = null;
        }

        _stop.Dispose();
        LogStopped(_logger, Info.Name);
    }

    [LoggerMessage(EventId = LogEvents.AgentStarted, Level = LogLevel.Information, Message = "agent {Name}: builds for {What}, {Slots} at a time")]
    private static partial void LogStarted(ILogger logger, string name, AgentInfo what, int slots);

    [LoggerMessage(EventId = LogEvents.AgentFailed, Level = LogLevel.Error, Message = "agent: the build of {DrvPath} failed inside Kiln")]
    private static partial void LogFailed(ILogger logger, string drvPath, Exception exception);

    [LoggerMessage(EventId = LogEvents.AgentUnavailable, Level = LogLevel.Warning, Message = "agent {Name}: could not build {DrvPath}: {Reason}")]
    private static partial void LogUnavailable(ILogger logger, string name, string drvPath, string reason);

    [LoggerMessage(EventId = LogEvents.AgentStopped, Level = LogLevel.Information, Message = "agent {Name} stopped")]
    private static partial void LogStopped(ILogger logger, string name);
}
