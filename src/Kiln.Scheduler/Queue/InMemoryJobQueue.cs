using Kiln.Agent;
using Kiln.Protocol;

namespace Kiln.Scheduler.Queue;

/// <summary>
/// <see cref="IJobQueue"/> in one process (the embedded default): offers wait until an agent that can run them claims
/// one — in arrival order within an account, and round-robin between accounts (<see cref="FairLine{T}"/>); a lease not
/// heartbeaten for <see cref="LeaseDuration"/> is taken back (its agent is told to stop) and the job offered again,
/// up to <see cref="MaxAttempts"/> times.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Naming", "CA1711", Justification = "it is a queue")]
public sealed class InMemoryJobQueue : IJobQueue, IDisposable
{
    private readonly Lock _gate = new();
    private readonly FairLine<Entry> _waiting = new(e => e.Offer.Account);
    private readonly List<(AgentInfo Agent, TaskCompletionSource<ILease> Claim)> _claims = [];
    private readonly HashSet<Entry> _leased = [];
    private readonly List<AgentInfo> _agents = [];
    private const long FinishedWindow = 3_600_000; // ms of finish times kept, for the farm's throughput
    private readonly Queue<long> _finished = new(); // when leased jobs finished (Environment.TickCount64), the last hour's
    private readonly Timer _expiry;

    public InMemoryJobQueue(TimeSpan? leaseDuration = null)
    {
        LeaseDuration = leaseDuration ?? TimeSpan.FromSeconds(60);
        var period = LeaseDuration / 4;
        _expiry = new Timer(_ => ExpireLeases(), null, period, period);
    }

    public TimeSpan LeaseDuration { get; }

    /// <summary>How often a job is offered before losing its agent counts as its failure.</summary>
    public int MaxAttempts { get; init; } = 3;

    public void Dispose() => _expiry.Dispose();

    /// <summary>What the queue holds now, for the server's gauges.</summary>
    public QueueSnapshot Snapshot()
    {
        lock (_gate)
        {
            var now = Environment.TickCount64;
            ForgetFinishedBefore(now - FinishedWindow);
            return new QueueSnapshot(_waiting.Items.Count(), _leased.Count, _agents.Count(a => !a.StockBuilder), _agents.Count(a => a.StockBuilder),
                _agents.Sum(a => a.Slots), _agents.Sum(LeaseCount))
            {
                Loads = [.. _agents.Select(a => new AgentLoad(a.Name, [.. a.Systems.Order(StringComparer.Ordinal)], a.Slots, LeaseCount(a), a.StockBuilder))],
                FinishedLastHour = _finished.Count,
                FinishedLastFiveMinutes = _finished.Count(t => t >= now - 300_000),
            };
        }
    }

    public IReadOnlyList<QueuedJob> Jobs()
    {
        lock (_gate)
        {
            return [.. _waiting.Items.Select((e, i) => new QueuedJob(e.Offer.BuildId, e.Offer.Account, i + 1, _agents.Any(a => a.CanRun(e.Offer.Requirements)), null)),
                .. _leased.Select(e => new QueuedJob(e.Offer.BuildId, e.Offer.Account, 0, true, e.CurrentLease?.Agent.Name))];
        }
    }

    public IDisposable Register(AgentInfo agent)
    {
        lock (_gate)
        {
            _agents.Add(agent);
        }

        return new Registration(this, agent);
    }

    private sealed class Registration(InMemoryJobQueue queue, AgentInfo agent) : IDisposable
    {
        public void Dispose()
        {
            List<Entry> stranded;
            lock (queue._gate)
            {
                queue._agents.Remove(agent);
                stranded = queue._waiting.Items.Where(e => !queue._agents.Any(a => a.CanRun(e.Offer.Requirements))).ToList();
            }

            // Jobs only this agent could run wait for another like it, as a new offer would, then fail.
            foreach (var entry in stranded.Where(_ => queue.PlacementWait > TimeSpan.Zero))
            {
                queue.ArmPlacementWait(entry);
            }
        }
    }

    public JobTicket Offer(JobOffer offer)
    {
        ArgumentNullException.ThrowIfNull(offer);
        var entry = new Entry(this, offer);
        bool wait;
        lock (_gate)
        {
            wait = !_agents.Any(a => a.CanRun(offer.Requirements));
            if (wait && PlacementWait <= TimeSpan.Zero)
            {
                entry.Finish(Unplaceable(offer));
                return entry;
            }

            Enqueue(entry);
        }

        // An agent that can run it may yet connect (agents come and go): wait for one, saying so, for a while. (The
        // log is written outside the queue's lock: the step's own lock is taken there.)
        if (wait)
        {
            ArmPlacementWait(entry);
        }
        else if (SlotWaitNotice > TimeSpan.Zero)
        {
            _ = Task.Delay(SlotWaitNotice).ContinueWith(_ => NoteSlotWait(entry), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        return entry;
    }

    /// <summary>How long a job waits for a slot before its log says so (zero: never).</summary>
    public TimeSpan SlotWaitNotice { get; init; } = TimeSpan.FromSeconds(1);

    // A job still in line after SlotWaitNotice: its log says why (every agent that could run it is busy) and how busy.
    private void NoteSlotWait(Entry entry)
    {
        string line;
        var own = false;
        lock (_gate)
        {
            if (!_waiting.Items.Contains(entry))
            {
                return; // claimed, cancelled or failed meanwhile
            }

            var able = _agents.Where(a => a.CanRun(entry.Offer.Requirements)).ToList();
            var slots = able.Sum(a => a.Slots);
            var busy = able.Sum(LeaseCount);
            if (!AccountHasRoom(entry))
            {
                // Its own account's limit holds it, not the farm: said to that account's sessions only (its limit and
                // its line are nobody else's business), with how many of its builds are ahead of it.
                line = $"kiln: waiting for a build slot for '{entry.Offer.Job.DrvPath}': account limit {entry.Offer.AccountMaxJobs} running, {_waiting.Ahead(entry)} queued ahead";
                own = true;
            }
            else
            {
                line = $"kiln: waiting for a build slot for '{entry.Offer.Job.DrvPath}': {busy} of {slots} busy, {_waiting.Items.Count()} builds waiting";
            }
        }

        // (Outside the queue's lock: the step takes its own.)
        if (own)
        {
            entry.Offer.Log.NoteFor(entry.Offer.Account, line);
        }
        else
        {
            entry.Offer.Log.Line(line);
        }
    }

    // Says the job waits for an agent that can run it, and fails it if none has come when the wait is over.
    private void ArmPlacementWait(Entry entry)
    {
        var offer = entry.Offer;
        offer.Log.Line($"kiln: waiting for an agent with system {offer.Requirements.System}" +
            (offer.Requirements.Features.Count == 0 ? "" : $" and features {string.Join(", ", offer.Requirements.Features.Order(StringComparer.Ordinal))}") +
            $" to build '{offer.Job.DrvPath}' (at most {PlacementWait.TotalSeconds:0} s)");
        _ = Task.Delay(PlacementWait).ContinueWith(_ => GiveUpWaiting(entry), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    /// <summary>How long a job no registered agent can run waits for one (zero: it fails at once, as Nix does).</summary>
    public TimeSpan PlacementWait { get; init; }

    // Called under the gate.
    private BuildOutcome Unplaceable(JobOffer offer)
    {
        var known = _agents.Count == 0 ? "it has no agents" : $"its agents are {string.Join("; ", _agents.Select(a => a.ToString()).Distinct())}";
        return BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"{offer.Requirements} is required to build '{offer.Job.DrvPath}', but Kiln cannot build that: {known}");
    }

    // The wait is over: a job still waiting that no agent can run fails.
    private void GiveUpWaiting(Entry entry)
    {
        BuildOutcome outcome;
        lock (_gate)
        {
            if (!_waiting.Contains(entry) || _agents.Any(a => a.CanRun(entry.Offer.Requirements)))
            {
                return;
            }

            _waiting.Remove(entry);
            outcome = Unplaceable(entry.Offer);
        }

        entry.Finish(outcome);
    }

    /// <summary>
    /// How many bytes of a job's inputs an agent is known to hold already (null: no agent holds anything). Among the
    /// agents waiting for work that can run a job, it goes to the one holding the most, then to the least loaded.
    /// Called under the queue's lock: it must only look things up.
    /// </summary>
    public Func<AgentInfo, JobOffer, long>? Affinity { get; init; }

    // Hands the entry to the best waiting agent that can run it, or queues it. Called under the gate.
    private void Enqueue(Entry entry)
    {
        entry.QueuedAt = Environment.TickCount64;
        if (!LeaseToBestClaim(entry))
        {
            _waiting.AddLast(entry);
        }
    }

    // Leases the entry to the best waiting claim that may take it (most of its inputs held, then least loaded); false
    // when none may. Called under the gate.
    private bool LeaseToBestClaim(Entry entry)
    {
        var best = -1;
        (long Bytes, double Load) bestScore = (-1, 0);
        for (var i = 0; i < _claims.Count; i++)
        {
            var (agent, claim) = _claims[i];
            if (claim.Task.IsCompleted || !MayTake(agent, entry))
            {
                continue;
            }

            var score = (Bytes: Affinity?.Invoke(agent, entry.Offer) ?? 0, Load: Load(agent));
            if (best < 0 || score.Bytes > bestScore.Bytes || (score.Bytes == bestScore.Bytes && score.Load < bestScore.Load))
            {
                (best, bestScore) = (i, score);
            }
        }

        if (best < 0)
        {
            return false;
        }

        var (taker, taken) = _claims[best];
        _claims.RemoveAt(best);
        taken.TrySetResult(entry.Lease(taker));
        return true;
    }

    // Whether the agent may take the job now: it can run it, its memory grant fits beside its running builds', and, for
    // a stock builder, no Kiln agent that can run it has room. Called under the gate.
    private bool MayTake(AgentInfo agent, Entry entry) =>
        agent.CanRun(entry.Offer.Requirements) && MemoryFits(agent, entry.Offer) && !(agent.StockBuilder && AgentHasRoom(entry.Offer)) && AccountHasRoom(entry);

    // Whether fewer of the job's account's jobs run than its max-jobs allows (a job another account wants too is not
    // held). Called under the gate.
    private bool AccountHasRoom(Entry entry) =>
        entry.Offer.AccountMaxJobs <= 0 || entry.Lifted || _leasedByAccount.GetValueOrDefault(entry.Offer.Account) < entry.Offer.AccountMaxJobs;

    // The number of leased jobs per account, kept with _leased (max-jobs asks it for every waiting job it looks at).
    private readonly Dictionary<long, int> _leasedByAccount = [];

    // Called under the gate, whenever an entry joins or leaves _leased.
    private void CountLease(Entry entry, int change)
    {
        var count = _leasedByAccount.GetValueOrDefault(entry.Offer.Account) + change;
        if (count > 0)
        {
            _leasedByAccount[entry.Offer.Account] = count;
        }
        else
        {
            _leasedByAccount.Remove(entry.Offer.Account);
        }
    }

    // An agent that said how much memory its builds may use takes a job expected to use what fits beside what its
    // running builds are expected to use; an idle one takes any (its limit is capped by the agent). Called under the gate.
    private bool MemoryFits(AgentInfo agent, JobOffer offer)
    {
        var wanted = offer.Requirements.MemoryBytes;
        if (agent.MemoryBytes <= 0 || wanted <= 0)
        {
            return true;
        }

        var used = _leased.Where(e => ReferenceEquals(e.CurrentLease?.Agent, agent)).Sum(e => Math.Min(e.Offer.Requirements.MemoryBytes, agent.MemoryBytes));
        return used == 0 || used + wanted <= agent.MemoryBytes;
    }

    // A lease ended: memory it held is free, a Kiln agent may have room again, and its account may run one more. Claims
    // whose answer depends on that (agents that count memory, stock builders; every claim when the account has jobs
    // held back by its max-jobs) look at the waiting jobs again; any other waiting claim already saw every job it
    // could run. Called under the gate.
    private void Rebalance(Entry ended)
    {
        var held = _waiting.Items.Any(e => e.Offer.Account == ended.Offer.Account && e.Offer.AccountMaxJobs > 0);
        for (var i = 0; i < _claims.Count; i++)
        {
            var (agent, claim) = _claims[i];
            if ((agent.MemoryBytes <= 0 && !agent.StockBuilder && !held) || claim.Task.IsCompleted)
            {
                continue;
            }

            if (_waiting.TakeFirst(e => MayTake(agent, e)) is { } entry)
            {
                _claims.RemoveAt(i--);
                claim.TrySetResult(entry.Lease(agent));
            }
        }
    }

    // Whether a Kiln agent (not a stock builder) that can run the job has a slot free: then the job waits for it rather
    // than going to a stock builder. Called under the gate.
    private bool AgentHasRoom(JobOffer offer) => _agents.Any(a => !a.StockBuilder && a.CanRun(offer.Requirements) && Load(a) < 1);

    // The share of an agent's slots its leases take. Called under the gate.
    private double Load(AgentInfo agent) => LeaseCount(agent) / (double)Math.Max(1, agent.Slots);

    // The jobs leased to an agent (this registration of it). Called under the gate.
    // Under _gate: the throughput window keeps an hour.
    private void ForgetFinishedBefore(long tick)
    {
        while (_finished.TryPeek(out var oldest) && oldest < tick)
        {
            _finished.Dequeue();
        }
    }

    private int LeaseCount(AgentInfo agent) => _leased.Count(e => ReferenceEquals(e.CurrentLease?.Agent, agent));

    public Task<ILease> ClaimAsync(AgentInfo agent, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(agent);
        if (cancellationToken.IsCancellationRequested)
        {
            return Task.FromCanceled<ILease>(cancellationToken); // a claim already given up takes nothing
        }

        TaskCompletionSource<ILease> claim;
        lock (_gate)
        {
            if (_waiting.TakeFirst(e => MayTake(agent, e)) is { } waiting)
            {
                return Task.FromResult<ILease>(waiting.Lease(agent));
            }

            claim = new TaskCompletionSource<ILease>(TaskCreationOptions.RunContinuationsAsynchronously);
            _claims.Add((agent, claim));
        }

        if (cancellationToken.CanBeCanceled)
        {
            var registration = cancellationToken.Register(() =>
            {
                lock (_gate)
                {
                    _claims.RemoveAll(c => c.Claim == claim);
                }

                claim.TrySetCanceled(cancellationToken);
            });

            // A long-lived token (the agent's) must not keep every job it was handed reachable through this callback.
            _ = claim.Task.ContinueWith(_ => registration.Dispose(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }

        return claim.Task;
    }

    private void ExpireLeases()
    {
        List<(Entry Entry, Lease Lease)> lapsed;
        lock (_gate)
        {
            lapsed = _leased.Select(e => (Entry: e, Lease: e.CurrentLease)).Where(l => l.Lease is { } lease && lease.Lapsed(LeaseDuration)).Select(l => (l.Entry, l.Lease!)).ToList();
        }

        foreach (var (entry, lease) in lapsed)
        {
            entry.TakeBack(lease, "its agent stopped answering");
        }
    }

    /// <summary>One offered job: its ticket, and its current lease.</summary>
    private sealed class Entry(InMemoryJobQueue queue, JobOffer offer) : JobTicket
    {
        private readonly TaskCompletionSource<BuildOutcome> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private Lease? _lease;
        private int _attempts;
        private bool _cancelled;

        public JobOffer Offer => offer;

        public override Task<BuildOutcome> Completion => _completion.Task;

        public override int Attempts
        {
            get
            {
                lock (queue._gate)
                {
                    return _attempts;
                }
            }
        }

        public void Finish(BuildOutcome outcome) => _completion.TrySetResult(outcome);

        /// <summary>Another account wants it too: its account's max-jobs no longer holds it (read under the queue's gate).</summary>
        public bool Lifted { get; private set; }

        public override void LiftAccountLimit()
        {
            lock (queue._gate)
            {
                if (Lifted || offer.AccountMaxJobs <= 0)
                {
                    return;
                }

                Lifted = true;
                // Waiting: a claim waiting now may take it (it keeps its place in line otherwise).
                if (queue._waiting.Contains(this) && queue.LeaseToBestClaim(this))
                {
                    queue._waiting.Remove(this);
                }
            }
        }

        /// <summary>When it was last put in line (Environment.TickCount64), for the queue-wait histogram.</summary>
        public long QueuedAt { get; set; }

        // Called under the queue's gate.
        public Lease Lease(AgentInfo agent)
        {
            KilnMetrics.QueueWait.Record((Environment.TickCount64 - QueuedAt) / 1000.0);
            _attempts++;
            _lease = new Lease(this, agent);
            queue._leased.Add(this);
            queue.CountLease(this, +1);
            return _lease;
        }

        /// <summary>The lease the job is under now (read under the queue's gate).</summary>
        public Lease? CurrentLease => _lease;

        public override void Cancel()
        {
            Lease? running;
            lock (queue._gate)
            {
                if (_completion.Task.IsCompleted || _cancelled)
                {
                    return;
                }

                _cancelled = true;
                running = _lease;
                if (running is null)
                {
                    queue._waiting.Remove(this);
                }
            }

            if (running is null)
            {
                Finish(BuildOutcome.Failed(BuildFailureKind.MiscFailure, $"the build of '{offer.Job.DrvPath}' was cancelled"));
            }
            else
            {
                running.Stop(); // the agent reports its (cancelled) outcome
            }
        }

        // The lease ends without an outcome: offer the job again, unless it was cancelled or has lost agents too often.
        // Only the lease the job is under now can end it: a lease taken back earlier (its agent late) changes nothing.
        public void TakeBack(Lease ending, string reason, bool counted = true)
        {
            Lease? old;
            bool again;
            bool stranded = false;
            int attempt;
            lock (queue._gate)
            {
                old = _lease;
                if (old is null || old != ending || _completion.Task.IsCompleted)
                {
                    return;
                }

                _lease = null;
                queue._leased.Remove(this);
                queue.CountLease(this, -1);
                queue.Rebalance(this);
                if (!counted)
                {
                    _attempts--;
                }

                again = !_cancelled && _attempts < queue.MaxAttempts;
                attempt = _attempts + 1; // read before Enqueue: a waiting agent may lease it at once
                if (again)
                {
                    queue.Enqueue(this);
                    stranded = !queue._agents.Any(a => a.CanRun(offer.Requirements)) && queue.PlacementWait > TimeSpan.Zero;
                }
            }

            old.Stop();
            if (stranded)
            {
                queue.ArmPlacementWait(this); // no agent left that can run it: wait for one as a new offer would
            }

            if (again && !counted)
            {
                return;
            }

            if (again)
            {
                // The one line the client sees of it: the build goes on elsewhere.
                offer.Log.Line($"kiln: {reason} ({old.Agent.Name}); building '{offer.Job.DrvPath}' again on another agent (attempt {attempt} of {queue.MaxAttempts})");
            }
            else
            {
                Finish(BuildOutcome.Failed(BuildFailureKind.MiscFailure,
                    _cancelled ? $"the build of '{offer.Job.DrvPath}' was cancelled" : $"Kiln could not build '{offer.Job.DrvPath}': {reason} ({_attempts} attempts)"));
            }
        }

        public bool Completed(Lease lease, BuildOutcome outcome)
        {
            lock (queue._gate)
            {
                if (_lease != lease)
                {
                    return false; // a lease taken back: its late report is ignored
                }

                _lease = null;
                queue._leased.Remove(this);
                queue.CountLease(this, -1);
                var now = Environment.TickCount64;
                queue._finished.Enqueue(now);
                queue.ForgetFinishedBefore(now - FinishedWindow);
                queue.Rebalance(this);
            }

            Finish(outcome);
            return true;
        }

        public bool IsCurrent(Lease lease)
        {
            lock (queue._gate)
            {
                return _lease == lease;
            }
        }
    }

    // Its token source needs no disposal: it never has a timer.
    [System.Diagnostics.CodeAnalysis.SuppressMessage("Design", "CA1001", Justification = "a CancellationTokenSource without timers holds nothing to release")]
    private sealed class Lease(Entry entry, AgentInfo agent) : ILease
    {
        private readonly CancellationTokenSource _stop = new();
        private long _lastHeartbeat = Environment.TickCount64;

        public JobOffer Offer => entry.Offer;

        public AgentInfo Agent => agent;

        public CancellationToken Cancelled => _stop.Token;

        public bool Lapsed(TimeSpan duration) => Environment.TickCount64 - Interlocked.Read(ref _lastHeartbeat) > (long)duration.TotalMilliseconds;

        public void Heartbeat() => Interlocked.Exchange(ref _lastHeartbeat, Environment.TickCount64);

        public bool IsCurrent => entry.IsCurrent(this);

        public bool Complete(BuildOutcome outcome) => entry.Completed(this, outcome with { Agent = agent.Name });

        public void Abandon(string reason) => entry.TakeBack(this, reason);

        public void Release() => entry.TakeBack(this, "", counted: false);

        public void Stop()
        {
            try
            {
                _stop.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }
}
