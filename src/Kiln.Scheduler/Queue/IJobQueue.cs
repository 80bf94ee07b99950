using Kiln.Agent;

namespace Kiln.Scheduler.Queue;

/// <summary>What a job needs of the agent that runs it (Nix's system and <c>requiredSystemFeatures</c>).</summary>
public sealed record JobRequirements(string System, IReadOnlySet<string> Features)
{
    /// <summary>
    /// Whether the derivation and every input are globally trusted (the store model's sense). Only such jobs go to
    /// stock Nix builders: a builder's one store is shared by every build sent there, so an account's own contents
    /// under an input-addressed path, or outputs a derivation nothing verified claims, must never be put there.
    /// </summary>
    public bool GloballyTrusted { get; init; }

    /// <summary>
    /// The memory the job is expected to use (zero: unknown) — what placement counts against an agent's memory. Its
    /// limit (<see cref="BuildLimits.MemoryBytes"/>) is larger: twice it from history, or the maximum when unknown.
    /// </summary>
    public long MemoryBytes { get; init; }

    /// <summary>The derivation asks to leave the sandbox (<c>__noChroot</c>): never sent to a stock builder's shared store.</summary>
    public bool Impure { get; init; }

    /// <summary>Nix's words for it: <c>a 'x86_64-linux' with features {kvm}</c>.</summary>
    public override string ToString() => Features.Count == 0 ? $"a '{System}'" : $"a '{System}' with features {{{string.Join(", ", Features.Order(StringComparer.Ordinal))}}}";
}

/// <summary>
/// An agent as it advertises itself: the systems it builds for, the features it has, and how many builds it runs at
/// once. Builtin builders (<c>builtin:fetchurl</c>, system <c>builtin</c>) run on any agent, as in Nix.
/// </summary>
public sealed record AgentInfo(string Name, IReadOnlySet<string> Systems, IReadOnlySet<string> Features, int Slots)
{
    /// <summary>
    /// A stock Nix machine (<c>kiln builder add</c>), not a Kiln agent: it takes only globally trusted jobs (its store is
    /// shared, not per build), and only those no agent can take now — agents first.
    /// </summary>
    public bool StockBuilder { get; init; }

    /// <summary>
    /// The memory its builds may use together (zero: not said, and not counted). A job goes to it only when the memory
    /// it is expected to use fits beside that of the builds it runs — or when it runs none.
    /// </summary>
    public long MemoryBytes { get; init; }

    public bool CanRun(JobRequirements requirements)
    {
        ArgumentNullException.ThrowIfNull(requirements);
        return (requirements.System == "builtin" || Systems.Contains(requirements.System)) && requirements.Features.IsSubsetOf(Features)
            && (!StockBuilder || (requirements.GloballyTrusted && !requirements.Impure));
    }

    public override string ToString() => $"a '{string.Join("', '", Systems.Order(StringComparer.Ordinal))}' with features {{{string.Join(", ", Features.Order(StringComparer.Ordinal))}}}";
}

/// <summary>
/// A build offered to agents: the job, what it needs, where its log lines go as the agent sends them, and the account
/// whose request started it (the queue is fair between accounts).
/// </summary>
public sealed record JobOffer(long BuildId, BuildJob Job, JobRequirements Requirements, IBuildLog Log, long Account = 0)
{
    /// <summary>
    /// The most of <see cref="Account"/>'s jobs that may be leased at once for this one to be leased too (its
    /// <c>max-jobs</c> setting; zero: no limit). The job waits in line, and its log says so, while that many run.
    /// </summary>
    public int AccountMaxJobs { get; init; }
}

/// <summary>
/// The job queue / lease port between the scheduler and the agents. The scheduler offers jobs; agents pull them —
/// claim one with a lease, heartbeat while it runs, then complete or abandon it. A lease whose agent stops
/// heartbeating is taken back and the job offered again. The embedded agent pulls exactly as a remote agent over HTTP
/// will; the in-memory queue (<see cref="InMemoryJobQueue"/>) is the embedded default.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Naming", "CA1711", Justification = "it is a queue")]
public interface IJobQueue
{
    /// <summary>Makes an agent known (jobs nobody registered can run fail at once); dispose to withdraw it.</summary>
    IDisposable Register(AgentInfo agent);

    /// <summary>Offers a job; the ticket completes with the outcome reported by the agent that ran it.</summary>
    JobTicket Offer(JobOffer offer);

    /// <summary>Waits for a job <paramref name="agent"/> can run and leases it to it.</summary>
    Task<ILease> ClaimAsync(AgentInfo agent, CancellationToken cancellationToken);

    /// <summary>What the queue holds now: the waiting jobs in line (first first), then the leased ones.</summary>
    IReadOnlyList<QueuedJob> Jobs();
}

/// <summary>A job in the queue: waiting at <see cref="Position"/> (1: next; whether a registered agent can run it), or leased to <see cref="Agent"/>.</summary>
public sealed record QueuedJob(long BuildId, long Account, int Position, bool Runnable, string? Agent);

/// <summary>The scheduler's handle on an offered job.</summary>
public abstract class JobTicket
{
    /// <summary>The outcome: the agent's, or a failure Kiln reports (cancelled, no agent can run it, agent lost).</summary>
    public abstract Task<BuildOutcome> Completion { get; }

    /// <summary>How many times an agent took the job so far (a lease given back before it reached the agent is not counted).</summary>
    public abstract int Attempts { get; }

    /// <summary>Nobody wants the job any more: withdrawn if waiting, its agent told to stop if running.</summary>
    public abstract void Cancel();

    /// <summary>
    /// Another account wants the job too: its account's max-jobs (<see cref="JobOffer.AccountMaxJobs"/>) no longer
    /// holds it back. Queues without per-account limits ignore it.
    /// </summary>
    public virtual void LiftAccountLimit()
    {
    }
}

/// <summary>An agent's hold on a job it claimed.</summary>
public interface ILease
{
    JobOffer Offer { get; }

    /// <summary>Fires when the job is cancelled or the lease was taken back: the agent stops the build.</summary>
    CancellationToken Cancelled { get; }

    /// <summary>Says the agent is still at it (the lease lapses without these).</summary>
    void Heartbeat();

    /// <summary>Whether the job is still under this lease (false once it was taken back or ended).</summary>
    bool IsCurrent { get; }

    /// <summary>Reports how the build ended (a failure of the build itself included); false when the lease was no longer the job's (the report is ignored).</summary>
    bool Complete(BuildOutcome outcome);

    /// <summary>Gives the job back without an outcome (the agent is stopping, or failed itself): it is offered again, as another attempt.</summary>
    void Abandon(string reason);

    /// <summary>Gives the job back as if it had never been claimed (it never reached the agent): no attempt is counted, no line logged.</summary>
    void Release();
}

/// <summary>
/// A queue's state at one moment: jobs waiting for an agent and leased to one, Kiln agents and stock Nix builders
/// registered, their slots, and the slots busy with a lease.
/// </summary>
public sealed record QueueSnapshot(int Waiting, int Leased, int Agents, int StockBuilders, int Slots, int BusySlots)
{
    /// <summary>Each registered agent or stock builder and how many of its slots are busy (for the operator's farm view).</summary>
    public IReadOnlyList<AgentLoad> Loads { get; init; } = [];

    /// <summary>Jobs agents finished (built or failed) in the last hour, and in the last five minutes.</summary>
    public int FinishedLastHour { get; init; }

    public int FinishedLastFiveMinutes { get; init; }
}

/// <summary>One agent in a <see cref="QueueSnapshot"/>: its name, systems, slots and the leases it holds.</summary>
public sealed record AgentLoad(string Name, IReadOnlyList<string> Systems, int Slots, int Busy, bool StockBuilder);
