using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using Kiln.Agent;
using Kiln.Nix.Hashing;
using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Protocol.Worker;
using Kiln.Scheduler.Queue;
using Kiln.Store;
using Kiln.Store.Blobs;
using Kiln.Store.Logs;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Logging;

namespace Kiln.Scheduler;

/// <summary>
/// Kiln's one scheduler: every session's build requests become steps, each identified by its derivation and the NAR
/// hashes of its whole input closure (<see cref="StepKey"/>). A step already built successfully, for anyone, is
/// reused; one in flight is joined; otherwise it is recorded (so it has an id and a log of its own), offered on the
/// job queue, and run by whichever agent claims it. Each session gets its own <see cref="IWorkerBuilder"/>
/// (<see cref="ForSession"/>), which walks its request's derivation graph.
/// </summary>
public sealed partial class BuildScheduler
{
    private readonly Dictionary<string, RunningStep> _running = [];
    private readonly Lock _runningGate = new();

    // Steps that finished successfully a moment ago, for requests that looked for a build record just before it
    // was written (bounded: cleared when it grows).
    private readonly ConcurrentDictionary<string, StepOutcome> _recent = new();
    private readonly ILogger _logger;

    public BuildScheduler(IBuildMetadata builds, IBlobStore blobs, IJobQueue queue, IBuildLogStore logs, SchedulerOptions options, SecretKey? buildKey, ILogger logger)
    {
        Builds = builds;
        Content = blobs;
        Queue = queue;
        Logs = logs;
        Options = options;
        BuildKey = buildKey;
        _logger = logger;
    }

    internal IBuildMetadata Builds { get; }

    internal IBlobStore Content { get; }

    internal IJobQueue Queue { get; }

    internal IBuildLogStore Logs { get; }

    internal SchedulerOptions Options { get; }

    /// <summary>Kiln's key, which signs outputs built from trusted inputs.</summary>
    internal SecretKey? BuildKey { get; }

    /// <summary>Where successful builds of accounts with <c>push-to</c> queue their pushes (null: nothing is pushed).</summary>
    public IPushMetadata? Pushes { get; init; }

    /// <summary>The builder for one session, working in its view; the builds it asks for get <paramref name="tags"/> for its account.</summary>
    public IWorkerBuilder ForSession(StoreView view, IReadOnlyList<BuildTag>? tags = null, SessionLimits? limits = null) =>
        new SessionBuilder(this, view, tags ?? [], limits ?? SessionLimits.None);

    /// <summary>Steps running now (shutdown waits for them to end).</summary>
    public Task DrainAsync()
    {
        lock (_runningGate)
        {
            return Task.WhenAll(_running.Values.Select(s => (Task)s.Completion));
        }
    }

    /// <summary>The derivation (by path and content) and the contents of its input closure, as one key.</summary>
    internal static string StepKey(StorePath drvPath, NixHash drvNarHash, IEnumerable<(StorePath Path, NixHash NarHash)> inputs, long? privateTo = null)
    {
        var text = new StringBuilder();
        text.Append(drvPath.FullPath).Append(' ').Append(drvNarHash.ToNix32()).Append('\n');
        if (privateTo is { } account)
        {
            text.Append("account ").Append(account).Append('\n');
        }

        foreach (var (path, narHash) in inputs.OrderBy(i => i.Path))
        {
            text.Append(path.FullPath).Append(' ').Append(narHash.ToNix32()).Append('\n');
        }

        return Nix32.Encode(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    /// <summary>Runs the step with this key, or joins it if it is already running; the build is recorded as for <paramref name="accountId"/> too.</summary>
    internal Task<StepOutcome> RunOrJoinAsync(string key, BuildJob job, JobRequirements requirements, long accountId, IReadOnlyList<BuildTag> tags, IBuildEvents events,
        BuildLimits sessionLimits, SessionLimits accountLimits, CancellationToken cancellationToken)
    {
        RunningStep? step;
        RunningStep? stopping = null;
        StepOutcome? reused = null;
        lock (_runningGate)
        {
            if (_recent.TryGetValue(key, out var done))
            {
                reused = done;
                step = null;
            }
            else if (_running.TryGetValue(key, out step))
            {
                if (step.TryReserve())
                {
                    KilnMetrics.BuildsJoined.Add(1);
                }
                else
                {
                    (stopping, step) = (step, null);
                }
            }
            else
            {
                step = new RunningStep(key, job, accountId, Options.JoinBacklogLines);
                step.TryReserve();
                step.Completion = RunStepAsync(step, job, requirements, accountId, accountLimits);
                _running.Add(key, step);
            }
        }

        if (stopping is not null)
        {
            return AfterStoppedAsync(stopping, key, job, requirements, accountId, tags, events, sessionLimits, accountLimits, cancellationToken);
        }

        if (reused is { } earlier)
        {
            // (The client is told outside the lock: its session writes to a socket.)
            events.Message(ReusingMessage(job.DrvPath, earlier.Outcome.StopTime));
            return ReusedAsync(earlier, accountId, tags, cancellationToken);
        }

        return JoinAsync(step!, accountId, tags, events, sessionLimits, accountLimits.KeepBuildsRunning, cancellationToken);
    }

    // A step being stopped (nobody wanted it any more, or it was cancelled) is not joined: its end would be this
    // session's. The request is asked again once that step has ended (and left the running steps).
    private async Task<StepOutcome> AfterStoppedAsync(RunningStep stopping, string key, BuildJob job, JobRequirements requirements, long accountId,
        IReadOnlyList<BuildTag> tags, IBuildEvents events, BuildLimits sessionLimits, SessionLimits accountLimits, CancellationToken cancellationToken)
    {
        await Task.WhenAny(stopping.Completion).WaitAsync(cancellationToken).ConfigureAwait(false);
        return await RunOrJoinAsync(key, job, requirements, accountId, tags, events, sessionLimits, accountLimits, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Forgets a finished step's outcome (its outputs are gone), so the next request for it builds again — that
    /// outcome only: a newer one another session's rebuild remembered meanwhile stays.
    /// </summary>
    internal void Forget(string key, StepOutcome outcome) => _recent.TryRemove(new KeyValuePair<string, StepOutcome>(key, outcome with { Reused = false }));

    /// <summary>
    /// Cancels build <paramref name="buildId"/> for <paramref name="account"/>: the account's sessions waiting for it
    /// here stop waiting, each told so; the build stops when nobody else waits for it (another account that joined it
    /// keeps it); a build the account's client left running (keep-builds-running) for nobody is stopped. False when there
    /// was nothing of the account's to stop in this process (it ended, or runs elsewhere).
    /// </summary>
    public bool Cancel(long buildId, long account) => CancelWhere(s => s.RecordedId == buildId, account) > 0;

    /// <summary>
    /// Cancels <paramref name="account"/>'s requests in this process for <paramref name="drvPath"/>, whatever their
    /// build's state: one waiting for the account's limit (it has no record yet, so <see cref="Cancel"/> cannot name it),
    /// in line or running. The build stops unless another account still waits for it. Returns how many requests ended.
    /// </summary>
    public int CancelDerivation(StorePath drvPath, long account) => CancelWhere(s => s.DrvPath == drvPath, account);

    // The account's cancel through the API of the running steps chosen (picked under the lock, stopped outside it: the
    // sessions' ends run on their own threads, a build's cancellation on this one).
    private int CancelWhere(Func<RunningStep, bool> chosen, long account)
    {
        List<RunningStep> steps;
        lock (_runningGate)
        {
            steps = [.. _running.Values.Where(chosen)];
        }

        return steps.Sum(step => step.StopWaitsOf(account,
            BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"the build of '{step.DrvPath}' was cancelled through Kiln's API")));
    }

    /// <summary>
    /// The builds this process runs or has in line for <paramref name="account"/> (started by its requests, or waited
    /// for by them): waiting (with the place in line), running (with the agent), or being prepared.
    /// </summary>
    public (int Waiting, IReadOnlyList<QueuedStep> Steps) QueueFor(long account)
    {
        var (waiting, listed) = Listing(account);
        return (waiting, [.. listed.Select(l => l.Step)]);
    }

    // The builds this process runs or has in line as each account sees them (for one account, or all when null), in the
    // order a listing gives them, with the builds in line (all accounts').
    private (int Waiting, IReadOnlyList<(long Account, QueuedStep Step)> Listed) Listing(long? only)
    {
        List<RunningStep> steps;
        lock (_runningGate)
        {
            steps = [.. _running.Values];
        }

        var jobs = Queue.Jobs().GroupBy(j => j.BuildId).ToDictionary(g => g.Key, g => g.First());
        var waiting = jobs.Values.Count(j => j.Agent is null);
        var queued = new List<(long, QueuedStep)>();
        foreach (var step in steps)
        {
            foreach (var account in only is { } one ? step.IsFor(one) ? [one] : [] : step.Accounts)
            {
                if (step.RecordedId is not { } id)
                {
                    // Not started yet: waiting for one of the account's slots (listed, without a record, to that account
                    // alone: another account's session joined to it has no business with its limit, and a shared step
                    // takes no slot anyway), or its claim is being taken, or another front door builds it.
                    if (step.WaitsForAccountSlot && step.StartedFor == account && !step.SharedWithOtherAccounts)
                    {
                        queued.Add((account, new QueuedStep(null, step.DrvPath, QueuedState.AccountLimit, 0, null)));
                    }

                    continue;
                }

                queued.Add((account, jobs.TryGetValue(id, out var job)
                    ? job.Agent is { } agent
                        ? new QueuedStep(id, step.DrvPath, QueuedState.Running, 0, agent)
                        : new QueuedStep(id, step.DrvPath, job.Runnable ? QueuedState.Waiting : QueuedState.NoAgent, job.Position, null)
                    : new QueuedStep(id, step.DrvPath, QueuedState.Preparing, 0, null)));
            }
        }

        return (waiting, [.. queued.OrderBy(q => q.Item2.State).ThenBy(q => q.Item2.Position).ThenBy(q => q.Item2.BuildId)]);
    }

    /// <summary>
    /// The refusal a request of <paramref name="account"/> gets when the CPU its builds started this calendar month
    /// (UTC) reached <paramref name="quotaSeconds"/> — null while it has not. Asked before a build starts, never
    /// while one runs: a build is refused whole, not killed halfway.
    /// </summary>
    internal async Task<string?> CpuQuotaRefusalAsync(long account, long quotaSeconds, CancellationToken cancellationToken)
    {
        var now = DateTimeOffset.UtcNow;
        var month = new DateTimeOffset(now.Year, now.Month, 1, 0, 0, 0, TimeSpan.Zero);
        var used = await Builds.CpuMicrosecondsSinceAsync(account, month.ToUnixTimeSeconds(), cancellationToken).ConfigureAwait(false);
        return used < quotaSeconds * 1_000_000 ? null : string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"kiln: CPU quota exceeded: {used / 3.6e9:0.####} of {quotaSeconds / 3600.0:0.####} CPU hours this month (since {month:yyyy-MM-dd} UTC); builds start again next month, or ask the operator for more");
    }

    /// <summary>What a client is told when its step is answered by a build that succeeded before (for anyone).</summary>
    internal static string ReusingMessage(StorePath drvPath, DateTimeOffset finished) =>
        finished == default
            ? $"kiln: reusing an earlier build of '{drvPath}'"
            : $"kiln: reusing a build of '{drvPath}' from {finished.UtcDateTime:yyyy-MM-dd HH:mm} UTC";

    private async Task<StepOutcome> ReusedAsync(StepOutcome done, long accountId, IReadOnlyList<BuildTag> tags, CancellationToken cancellationToken)
    {
        await Builds.AddBuildAccountAsync(done.BuildId, accountId, cancellationToken).ConfigureAwait(false);
        await Builds.TagBuildAsync(done.BuildId, accountId, tags, cancellationToken).ConfigureAwait(false);
        return done with { Reused = true };
    }

    private async Task<StepOutcome> JoinAsync(RunningStep step, long accountId, IReadOnlyList<BuildTag> tags, IBuildEvents events, BuildLimits sessionLimits, bool keepRunning,
        CancellationToken cancellationToken)
    {
        var joined = step.JoinAsync(events, sessionLimits, accountId, cancellationToken, keepRunning);
        var joiner = accountId != step.StartedFor;
        if (joiner)
        {
            step.Ticket?.LiftAccountLimit(); // no longer the starting account's build alone: its max-jobs does not hold it
        }

        // The record's id as soon as the step has one, or none if this session's wait ends first: a step waiting for its
        // account's slot or another front door's build gets its record only when it starts, and a session cancelled
        // meanwhile must not wait for that.
        if ((joiner || tags.Count > 0)
            && (await Task.WhenAny(step.BuildId, joined).WaitAsync(cancellationToken).ConfigureAwait(false) == step.BuildId ? await step.BuildId.ConfigureAwait(false) : step.RecordedId) is { } id)
        {
            if (joiner)
            {
                await Builds.AddBuildAccountAsync(id, accountId, cancellationToken).ConfigureAwait(false);
            }

            await Builds.TagBuildAsync(id, accountId, tags, cancellationToken).ConfigureAwait(false);
        }

        return await joined.ConfigureAwait(false);
    }

    /// <summary>
    /// The job with its memory and cores granted from history, as nixbuild.net sizes builds: from the latest
    /// successful builds of the same package (its derivation name without version). Memory: twice the most they used,
    /// or the default for a package never built, within <c>--min-mem</c> and <c>--build-memory</c>. Cores: twice the
    /// most parallelism they reached (CPU time over wall time, rounded up), or the default, within <c>--min-cpu</c>
    /// and <c>--cores</c>. Twice, so a build that used all it was given gets room to show it needs more next time.
    /// </summary>
    /// <returns>The job, and the memory it is expected to use — what placement counts, not its limit: the most its
    /// package used (at least <c>--min-mem</c>), or for a package never built <c>--default-mem</c> if set, else
    /// <c>--min-mem</c> (its generous limit would otherwise let an agent run one new package at a time).</returns>
    private async Task<(BuildJob Job, long ExpectedMemory)> SizedAsync(BuildJob job, SessionLimits account)
    {
        // The account's settings narrow the server's bounds (max-cpu, max-mem) and choose within them (min-cpu,
        // default-cpu, min-mem); zero leaves the server's.
        var maxMemory = SessionLimits.Tighter(Options.BuildMemory, account.MaxMemory);
        var minMemory = account.MinMemory > 0 ? account.MinMemory : Options.MinMemory;
        var maxCores = (int)Math.Max(1, SessionLimits.Tighter(Options.Cores, account.MaxCores));
        var minCores = account.MinCores > 0 ? account.MinCores : Options.MinCores;
        var defaultCores = account.DefaultCores > 0 ? account.DefaultCores : Options.DefaultCores;
        if (maxCores < job.Limits.Cores || job.Limits.Cores <= 0)
        {
            job = job with { Limits = job.Limits with { Cores = maxCores } };
        }

        if (maxMemory > 0 && (job.Limits.MemoryBytes <= 0 || maxMemory < job.Limits.MemoryBytes))
        {
            job = job with { Limits = job.Limits with { MemoryBytes = maxMemory } };
        }

        var sizeCores = minCores < maxCores || (defaultCores > 0 && defaultCores < maxCores);
        if (maxMemory <= 0 && !sizeCores)
        {
            return (job, 0);
        }

        var usage = await Builds.RecentUsageAsync(PackageNames.Of(job.DrvPath.BaseName), 5, CancellationToken.None).ConfigureAwait(false);
        var limits = job.Limits;
        long expected = 0;
        if (maxMemory > 0)
        {
            // (Peaks are measurements an agent reports: a negative or absurd one must not wrap around.)
            var peak = usage.Count > 0 ? Math.Clamp(usage.Max(u => u.PeakMemory), 0, long.MaxValue / 2) : 0;
            var grant = peak > 0 ? peak * 2 : Options.DefaultMemory > 0 ? Options.DefaultMemory : maxMemory;
            var least = Math.Min(minMemory, maxMemory);
            limits = limits with { MemoryBytes = Math.Clamp(grant, least, maxMemory) };
            expected = Math.Clamp(peak > 0 ? peak : Options.DefaultMemory > 0 ? Options.DefaultMemory : least, least, maxMemory);
        }

        if (sizeCores)
        {
            var parallelism = usage.Where(u => u.WallSeconds > 0 && u.CpuMicroseconds > 0)
                .Select(u => Math.Min(u.CpuMicroseconds / 1e6 / u.WallSeconds, maxCores)).DefaultIfEmpty(0).Max();
            var grant = parallelism > 0 ? (int)Math.Ceiling(2 * parallelism) : defaultCores > 0 ? defaultCores : maxCores;
            limits = limits with { Cores = Math.Clamp(grant, Math.Clamp(minCores, 1, maxCores), maxCores) };
        }

        return (job with { Limits = limits }, expected);
    }

    private static long Mib(long bytes) => bytes >> 20;

    private async Task<StepOutcome> RunStepAsync(RunningStep step, BuildJob job, JobRequirements requirements, long accountId, SessionLimits accountLimits)
    {
        await Task.Yield();
        long id = 0;
        var attempts = 0;
        var outcome = BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"Kiln failed to build '{job.DrvPath}'");
        var claimed = false;
        try
        {
            if (await ClaimOrAwaitElsewhereAsync(step, accountId, accountLimits.MaxJobs).ConfigureAwait(false) is { } elsewhere)
            {
                step.Started(elsewhere.BuildId, null);
                step.Dispose();
                Finished(step.Key, elsewhere);
                return elsewhere;
            }

            claimed = true;
            // Every session left while the claim (or the account's slot) was being taken: no record for a cancelled build.
            step.Cancellation.ThrowIfCancellationRequested();
            id = await Builds.StartBuildAsync(step.Key, job.DrvPath.BaseName, accountId, DateTimeOffset.UtcNow.ToUnixTimeSeconds(), CancellationToken.None).ConfigureAwait(false);
            step.Started(id, Logs.Create(id));
            KilnMetrics.BuildsStarted.Add(1);
            (job, var expected) = await SizedAsync(job, accountLimits).ConfigureAwait(false);
            requirements = requirements with { MemoryBytes = expected };
            while (true)
            {
                // The account's max-jobs holds back its own builds only: one another account waits for too is not held
                // (lifted here when it joined before the offer, by JoinAsync when after).
                var ticket = Queue.Offer(new JobOffer(id, job, requirements, step, accountId) { AccountMaxJobs = accountLimits.MaxJobs });
                step.Ticket = ticket;
                if (step.SharedWithOtherAccounts)
                {
                    ticket.LiftAccountLimit();
                }

                using (step.Cancellation.Register(ticket.Cancel))
                {
                    outcome = await ticket.Completion.ConfigureAwait(false);
                }

                attempts += ticket.Attempts;

                if (outcome.Succeeded || !outcome.OutOfMemory || step.Cancellation.IsCancellationRequested || job.Limits.MemoryBytes <= 0)
                {
                    break;
                }

                var memoryCap = SessionLimits.Tighter(Options.BuildMemory, accountLimits.MaxMemory);
                if (job.Limits.MemoryBytes >= memoryCap)
                {
                    outcome = outcome with
                    {
                        ErrorMessage = outcome.ErrorMessage + (memoryCap < Options.BuildMemory || Options.BuildMemory <= 0
                            ? $"; {Mib(memoryCap)} MiB is the most memory the max-mem setting of the request that started it gives one build"
                            : $"; {Mib(memoryCap)} MiB is the most memory Kiln gives one build"),
                    };
                    break;
                }

                // Killed by its memory grant, which history or the default chose below the maximum: once more with twice it.
                var more = Math.Min(memoryCap, job.Limits.MemoryBytes * 2);
                step.Line($"kiln: '{job.DrvPath}' ran out of its {Mib(job.Limits.MemoryBytes)} MiB of memory; building it again with {Mib(more)} MiB");
                requirements = requirements with { MemoryBytes = job.Limits.MemoryBytes }; // it used at least what killed it
                job = job with { Limits = job.Limits with { MemoryBytes = more } };
            }

            if (!outcome.Succeeded && step.GaveUp is { } gaveUp)
            {
                outcome = gaveUp; // cancelled because its last session's own limit was passed: say which
            }
        }
        catch (OperationCanceledException) when (step.Cancellation.IsCancellationRequested)
        {
            // Every session gave up on the step while it waited for a slot or for another front door: not Kiln's failure.
            outcome = step.GaveUp ?? BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"the build of '{job.DrvPath}' was cancelled");
            step.Started(null, null);
        }
#pragma warning disable CA1031 // a failure of Kiln's is reported as the build's, never lost
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogBuildError(_logger, job.DrvPath.FullPath, e);
            outcome = BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"Kiln failed to build '{job.DrvPath}': {Kiln.Protocol.StorageFailure.Describe(e) ?? "an internal error (the server's log says more)"}");
            step.Started(null, null);
        }
        finally
        {
            step.Dispose();
        }

        if (id != 0)
        {
            // (Before the record is written: a build counted as started is counted as finished even if that fails.)
            KilnMetrics.BuildsFinished.Add(1, new KeyValuePair<string, object?>("outcome", KilnMetrics.OutcomeTag(outcome.Succeeded, outcome.Failure == BuildFailureKind.None ? "" : outcome.Failure.ToString())));
            if (outcome.StartTime != default && outcome.StopTime >= outcome.StartTime)
            {
                KilnMetrics.BuildDuration.Record((outcome.StopTime - outcome.StartTime).TotalSeconds, new KeyValuePair<string, object?>("outcome", outcome.Succeeded ? "built" : "failed"));
            }
        }

        try
        {
            if (id != 0)
            {
                // Before the record says the build ended: a front door waiting for it then finds the whole log.
                await SealLogAsync(id).ConfigureAwait(false);
                await Builds.FinishBuildAsync(id, new BuildEnd(outcome.Succeeded, outcome.Failure == BuildFailureKind.None ? "" : outcome.Failure.ToString(),
                    outcome.ErrorMessage, outcome.StopTime == default ? DateTimeOffset.UtcNow.ToUnixTimeSeconds() : outcome.StopTime.ToUnixTimeSeconds(),
                    outcome.CpuUser is { } user ? user.Ticks / 10 : null, outcome.CpuSystem is { } system ? system.Ticks / 10 : null, outcome.PeakMemoryBytes,
                    outcome.Outputs.Select(ToRecord).ToList(), outcome.Agent, Math.Max(attempts, 1))
                {
                    RanFrom = outcome.StartTime == default ? null : outcome.StartTime.ToUnixTimeSeconds(),
                }, CancellationToken.None).ConfigureAwait(false);
            }
        }
#pragma warning disable CA1031 // a failed build's own reason is what its clients need, not the record's
        catch (Exception e) when (!outcome.Succeeded)
#pragma warning restore CA1031
        {
            // A build that filled the disk fails, and then its record (on the same disk) cannot be written either: its
            // clients hear why the build failed, not that the disk is full. The record, left running without a claim,
            // is recorded as failed by the claims' next sweep (AbandonRunningBuildsAsync). A build that succeeded
            // still fails with the record's error, as before: other front doors reuse a build through its record.
            LogRecordNotWritten(_logger, id, e);
        }
        finally
        {
            // After the record: a front door waiting on the claim finds the build's end before it could claim the step.
            if (claimed)
            {
                _claimed.TryRemove(step.Key, out _);
                await ReleaseClaimAsync(step.Key).ConfigureAwait(false);
            }

            Finished(step.Key, new StepOutcome(outcome, id, Reused: false));
        }

        var seconds = (outcome.StopTime - outcome.StartTime).TotalSeconds;
        LogBuildDone(_logger, job.DrvPath.FullPath, id, outcome.Succeeded ? "built" : outcome.Failure.ToString(), seconds);
        return new StepOutcome(outcome, id, Reused: false);
    }

    private void Finished(string key, StepOutcome outcome)
    {
        lock (_runningGate)
        {
            _running.Remove(key);
            if (outcome.Outcome.Succeeded)
            {
                if (_recent.Count > 10_000)
                {
                    _recent.Clear();
                }

                _recent[key] = outcome with { Reused = false };
            }
        }
    }

    // Steps this front door holds a claim on, with when it claimed each (Environment.TickCount64), renewed by KeepClaimsAsync.
    private readonly ConcurrentDictionary<string, long> _claimed = new();

    /// <summary>
    /// Claims the step for this front door (null: build it here), or — while another front door on the same database
    /// holds it — waits for that build's end and returns its outcome as reused (the client's log gets one line saying
    /// so; the other front door has the build's own log). A build that failed there, or a claim that lapsed because its
    /// front door went away, is claimed and built here.
    /// </summary>
    /// <remarks>
    /// With several front doors on one database the account's max-jobs counts its builds on all of them: the claim must
    /// also become one of the account's slots (kept with it: renewed, released and lapsing together). While the account's
    /// limit of them run elsewhere, the claim is let go again and the client told why, so the step is never held by a
    /// build that waits: another account's front door may build it meanwhile, and this one then waits for that build.
    /// One front door alone leaves the count to its queue, which also says how many wait ahead. A build another account
    /// wants too is not held.
    /// </remarks>
    private async Task<StepOutcome?> ClaimOrAwaitElsewhereAsync(RunningStep step, long accountId, int maxJobs)
    {
        try
        {
            return await ClaimOrAwaitLoopAsync(step, accountId, maxJobs).ConfigureAwait(false);
        }
        finally
        {
            step.WaitsForAccountSlot = false; // claimed, built elsewhere, or given up: not waiting for a slot any more
        }
    }

    private async Task<StepOutcome?> ClaimOrAwaitLoopAsync(RunningStep step, long accountId, int maxJobs)
    {
        var told = false;
        var toldSlot = false;
        while (true)
        {
            var now = await ClockAsync().ConfigureAwait(false);
            if (toldSlot && !step.SharedWithOtherAccounts && !await MayTakeSlotAsync(accountId, maxJobs, now).ConfigureAwait(false))
            {
                await Task.Delay(Options.ClaimPoll, step.Cancellation).ConfigureAwait(false);
                continue;
            }

            var claimed = await Builds.ClaimStepAsync(step.Key, Options.FrontDoor, now + (long)Options.ClaimLease.TotalSeconds, now, CancellationToken.None)
                .ConfigureAwait(false);

            // Looked at after a claim too: another front door may have finished the step (its record is written before
            // its claim goes) between this request's look for a build and the claim. Only a record whose outputs are all
            // still stored counts: one whose content was collected is what sent this request here, to build again.
            if (await Builds.FindSuccessfulBuildAsync(step.Key, CancellationToken.None).ConfigureAwait(false) is { } record
                && await OutputsStoredAsync(record).ConfigureAwait(false))
            {
                step.WaitsForAccountSlot = false;
                if (claimed)
                {
                    await ReleaseClaimAsync(step.Key).ConfigureAwait(false);
                }

                await Builds.AddBuildAccountAsync(record.Id, accountId, CancellationToken.None).ConfigureAwait(false);
                if (told)
                {
                    await ReplayLogAsync(step, record.Id).ConfigureAwait(false);
                }

                var outcome = new BuildOutcome
                {
                    Outputs = record.Outputs.Select(FromRecord).ToList(),
                    StartTime = DateTimeOffset.FromUnixTimeSeconds(record.Started),
                    StopTime = DateTimeOffset.FromUnixTimeSeconds(record.Stopped),
                };
                return new StepOutcome(outcome, record.Id, Reused: true);
            }

            if (claimed)
            {
                bool slot;
                try
                {
                    slot = maxJobs <= 0 || !Builds.SharedByFrontDoors || step.SharedWithOtherAccounts
                        || await Builds.ClaimAccountSlotAsync(step.Key, Options.FrontDoor, accountId, maxJobs, now, CancellationToken.None).ConfigureAwait(false);
                }
                catch
                {
                    await ReleaseClaimAsync(step.Key).ConfigureAwait(false); // not left for the others to wait a lease out
                    throw;
                }

                if (slot)
                {
                    _claimed[step.Key] = Environment.TickCount64;
                    return null;
                }

                await ReleaseClaimAsync(step.Key).ConfigureAwait(false);
                if (!toldSlot)
                {
                    // To this account's sessions only: another's joining this step later has no business with its limit.
                    step.NoteFor(accountId, $"kiln: waiting for a build slot for '{step.DrvPath}': account limit {maxJobs} running on Kiln's front doors");
                    toldSlot = true;
                    step.WaitsForAccountSlot = true;
                }
            }
            else
            {
                step.WaitsForAccountSlot = false; // for another front door's build now (set again if a slot is refused)
                if (!told)
                {
                    step.Line($"kiln: another Kiln front door is building '{step.DrvPath}'; waiting for it");
                    told = true;
                }
            }

            await Task.Delay(Options.ClaimPoll, step.Cancellation).ConfigureAwait(false);
        }
    }

    // What the waiters for one account's slots on this front door last learnt of how many are free: one count per
    // account (and limit) per poll for all of them, each free slot tried by one waiter, rather than every waiter
    // claiming the step and the slot (four round trips, one under the account's row lock) every poll.
    private sealed class SlotLook(long until, int free)
    {
        public long Until { get; } = until;

        private int _free = free;

        public bool TakeOne() => Interlocked.Decrement(ref _free) >= 0;
    }

    private readonly ConcurrentDictionary<(long Account, int MaxJobs), Lazy<Task<SlotLook>>> _slotLooks = new();

    private async Task<bool> MayTakeSlotAsync(long account, int maxJobs, long now)
    {
        while (true)
        {
            var look = _slotLooks.GetOrAdd((account, maxJobs), key => new Lazy<Task<SlotLook>>(async () =>
            {
                var held = await Builds.CountAccountSlotsAsync(key.Account, now, CancellationToken.None).ConfigureAwait(false);
                return new SlotLook(Environment.TickCount64 + (long)Options.ClaimPoll.TotalMilliseconds, key.MaxJobs - held);
            }));
            var entry = KeyValuePair.Create((account, maxJobs), look); // removed only if still this look
            SlotLook seen;
            try
            {
                seen = await look.Value.ConfigureAwait(false);
            }
            catch
            {
                _slotLooks.TryRemove(entry); // the next poll asks again
                throw;
            }

            if (Environment.TickCount64 < seen.Until)
            {
                return seen.TakeOne();
            }

            _slotLooks.TryRemove(entry);
        }
    }

    private async Task SealLogAsync(long id)
    {
        try
        {
            await Logs.SealAsync(id, CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // the build is no less done: only other front doors' clients miss its log
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogLogNotShared(_logger, id, e);
        }
    }

    // The clients who waited here for another front door's build get its log at its end (the lines a session joining
    // late would get: the last JoinBacklogLines), as they would have had it live there.
    private const long ReplayTailBytes = 4L << 20;

    private async Task ReplayLogAsync(RunningStep step, long id)
    {
        var tail = new Queue<string>();
        try
        {
            var stream = await Logs.OpenReadAsync(id, 0, CancellationToken.None).ConfigureAwait(false);
            if (stream is null)
            {
                return;
            }

            // Only its end is read (the last lines are all that is shown): from a line's start within the last
            // ReplayTailBytes, not the whole of a log that may be as long as max-build-log-size.
            using var reader = new StreamReader(stream, System.Text.Encoding.UTF8);
            if (stream.CanSeek && stream.Length > ReplayTailBytes)
            {
                stream.Seek(-ReplayTailBytes, SeekOrigin.End);
                await reader.ReadLineAsync(step.Cancellation).ConfigureAwait(false); // the rest of a line begun before
            }

            while (await reader.ReadLineAsync(step.Cancellation).ConfigureAwait(false) is { } line)
            {
                tail.Enqueue(line);
                if (tail.Count > Options.JoinBacklogLines)
                {
                    tail.Dequeue();
                }
            }
        }
#pragma warning disable CA1031 // the outputs are there; only the log is missing
        catch (Exception e) when (e is not OperationCanceledException)
#pragma warning restore CA1031
        {
            LogLogNotShared(_logger, id, e);
            return;
        }

        step.Line($"kiln: the log of build {id}, from the front door that ran it:");
        foreach (var line in tail)
        {
            step.Line(line);
        }
    }

    // Fencing a front door that lost claims (a renewal found them taken, or it could not renew for a lease): their
    // builds are stopped, and their sessions told why; the other front door that holds the claims builds the steps.
    private void LoseClaims(IEnumerable<string> keys, long before)
    {
        foreach (var key in keys)
        {
            // Only a claim made before the renewal that missed it: one made since (the step finished, and was claimed
            // again in between) is not lost.
            if (!_claimed.TryGetValue(key, out var since) || since >= before || !_claimed.TryRemove(new KeyValuePair<string, long>(key, since)))
            {
                continue;
            }

            RunningStep? step;
            lock (_runningGate)
            {
                _running.TryGetValue(key, out step);
            }

            if (step is not null)
            {
                LogClaimLost(_logger, step.DrvPath.FullPath);
                step.Abandon(BuildOutcome.Failed(BuildFailureKind.MiscFailure,
                    $"this Kiln front door lost its claim on building '{step.DrvPath}' (it was cut off from the database for longer than the claim lease); build it again to join the front door that builds it now"));
            }
        }
    }

    // How far the database's clock is ahead of this machine's (seconds), measured at the first claim and again at every
    // renewal: claims are reckoned on the database's clock, so front doors whose clocks differ still agree on leases,
    // at one round trip per renewal rather than per claim.
    // A box swapped whole: threads read an offset, never half of one.
    private System.Runtime.CompilerServices.StrongBox<long>? _clockOffset;

    private async Task<long> ClockAsync() =>
        Volatile.Read(ref _clockOffset) is { } offset ? DateTimeOffset.UtcNow.ToUnixTimeSeconds() + offset.Value : await SyncClockAsync(CancellationToken.None).ConfigureAwait(false);

    private async Task<long> SyncClockAsync(CancellationToken cancellationToken)
    {
        var database = await Builds.ClockAsync(cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _clockOffset, new System.Runtime.CompilerServices.StrongBox<long>(database - DateTimeOffset.UtcNow.ToUnixTimeSeconds()));
        return database;
    }

    private async Task<bool> OutputsStoredAsync(BuildRecord record)
    {
        foreach (var output in record.Outputs)
        {
            if (!await Content.HasAsync(output.NarHash, CancellationToken.None).ConfigureAwait(false))
            {
                return false;
            }
        }

        return true;
    }

    private async Task ReleaseClaimAsync(string key)
    {
        try
        {
            await Builds.ReleaseStepClaimsAsync(Options.FrontDoor, key, CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // the claim lapses by itself; a front door waiting for it only waits longer
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogClaimError(_logger, e);
        }
    }

    /// <summary>
    /// Until <paramref name="stopping"/>: renews this front door's step claims every third of a lease, and fails the
    /// builds still recorded as running whose claims lapsed (their front door went away).
    /// </summary>
    public async Task KeepClaimsAsync(CancellationToken stopping)
    {
        // Monotonic: a step of the wall clock neither fences early nor late.
        var lastRenewed = Environment.TickCount64;
        var lease = (long)Options.ClaimLease.TotalMilliseconds;
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                await Task.Delay(Options.ClaimLease / 3, stopping).ConfigureAwait(false);
                try
                {
                    if (Environment.TickCount64 - lastRenewed > lease)
                    {
                        // Cut off from the database for longer than a lease: every claim may have lapsed and been taken,
                        // so this front door stops building rather than build what another one builds now.
                        LoseClaims(_claimed.Keys.ToList(), before: Environment.TickCount64);
                    }

                    // A renewal that hangs (a database cut off without a reset) is given up after a third of a lease,
                    // so the check above comes round in time.
                    using var patience = CancellationTokenSource.CreateLinkedTokenSource(stopping);
                    patience.CancelAfter(Options.ClaimLease / 3);
                    var started = Environment.TickCount64;
                    var now = await SyncClockAsync(patience.Token).ConfigureAwait(false);
                    var held = _claimed.Keys.ToList();
                    var renewed = await Builds.RenewStepClaimsAsync(held, Options.FrontDoor, now + (long)Options.ClaimLease.TotalSeconds, patience.Token).ConfigureAwait(false);
                    lastRenewed = started;
                    LoseClaims(held.Where(k => !renewed.Contains(k)), before: started);
                    var abandoned = await Builds.AbandonRunningBuildsAsync("the Kiln front door running this build went away", now, patience.Token).ConfigureAwait(false);
                    if (abandoned > 0)
                    {
                        LogAbandonedElsewhere(_logger, abandoned);
                    }
                }
#pragma warning disable CA1031 // the database unreachable for a moment: try again at the next round (never stop renewing)
                catch (Exception e) when (!stopping.IsCancellationRequested)
#pragma warning restore CA1031
                {
                    LogClaimError(_logger, e);
                }
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }
    }

    [LoggerMessage(EventId = LogEvents.StepClaimFailed, Level = LogLevel.Warning, Message = "step claims could not be kept up to date")]
    private static partial void LogClaimError(ILogger logger, Exception exception);

    [LoggerMessage(EventId = LogEvents.StepClaimLost, Level = LogLevel.Warning, Message = "lost the claim on building {DrvPath} (another front door builds it now): the build here is stopped")]
    private static partial void LogClaimLost(ILogger logger, string drvPath);

    [LoggerMessage(EventId = LogEvents.BuildRecordNotWritten, Level = LogLevel.Error, Message = "the end of build {Id}, which failed, could not be recorded")]
    private static partial void LogRecordNotWritten(ILogger logger, long id, Exception exception);

    [LoggerMessage(EventId = LogEvents.BuildLogNotShared, Level = LogLevel.Warning, Message = "the log of build {Id} could not be shared with other front doors")]
    private static partial void LogLogNotShared(ILogger logger, long id, Exception exception);

    /// <summary>Logs a push that could not be queued (the build's result stands).</summary>
    internal void PushNotQueued(long buildId, Exception exception) => LogPushNotQueued(_logger, buildId, exception);

    [LoggerMessage(EventId = LogEvents.PushNotQueued, Level = LogLevel.Warning, Message = "the push of build {Id}'s outputs could not be queued")]
    private static partial void LogPushNotQueued(ILogger logger, long id, Exception exception);

    [LoggerMessage(EventId = LogEvents.BuildsAbandonedElsewhere, Level = LogLevel.Warning, Message = "{Count} builds of a Kiln front door that went away are recorded as failed")]
    private static partial void LogAbandonedElsewhere(ILogger logger, int count);

    internal static BuildOutputRecord ToRecord(BuiltOutput output) =>
        new(output.Name, output.Path, output.NarHash, output.NarSize, output.References, output.ContentAddress);

    internal static BuiltOutput FromRecord(BuildOutputRecord output) =>
        new(output.Name, output.Path, output.NarHash, output.NarSize, output.References, output.ContentAddress);

    [LoggerMessage(EventId = LogEvents.BuildFailedInKiln, Level = LogLevel.Error, Message = "build of {DrvPath} failed inside Kiln")]
    private static partial void LogBuildError(ILogger logger, string drvPath, Exception exception);

    [LoggerMessage(EventId = LogEvents.BuildDone, Level = LogLevel.Information, Message = "build {Id} {DrvPath}: {Result} in {Seconds:0.000} s")]
    private static partial void LogBuildDone(ILogger logger, string drvPath, long id, string result, double seconds);
}

/// <summary>Where a build stands in this process: see <see cref="BuildScheduler.QueueFor"/>.</summary>
public enum QueuedState
{
    /// <summary>An agent runs it.</summary>
    Running,

    /// <summary>In line for a build slot.</summary>
    Waiting,

    /// <summary>In line, but no registered agent offers its system and features (it fails if none comes in time).</summary>
    NoAgent,

    /// <summary>Started, not yet in line (its memory and cores are being worked out, or it is between attempts).</summary>
    Preparing,

    /// <summary>
    /// Not started: its account's max-jobs builds run on Kiln's front doors (on PostgreSQL, where the limit counts
    /// every front door's builds), and it waits for one of them to end. It has no build record yet
    /// (<see cref="QueuedStep.BuildId"/> is null).
    /// </summary>
    AccountLimit,
}

/// <summary>
/// A build in this process's queue; <see cref="Position"/> counts from 1 among the builds in line (all accounts').
/// <see cref="BuildId"/> is null for a build waiting for its account's limit (<see cref="QueuedState.AccountLimit"/>).
/// </summary>
public sealed record QueuedStep(long? BuildId, Kiln.Nix.StorePaths.StorePath DrvPath, QueuedState State, int Position, string? Agent)
{
    /// <summary>As <paramref name="account"/>'s listing (and the queue board) gives it: the state's word, no place unless in line.</summary>
    public BoardEntry For(long account) => new(account, BuildId, DrvPath.ToString(), State.Name(), Position > 0 ? Position : null, Agent);
}
