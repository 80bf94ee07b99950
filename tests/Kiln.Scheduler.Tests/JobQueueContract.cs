using System.Collections.Concurrent;
using Kiln.Agent;
using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;
using Kiln.Scheduler.Queue;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// The contract of <see cref="IJobQueue"/>, the port between the scheduler and its agents: offers go to an agent that
/// can run them (system, <c>requiredSystemFeatures</c>), outcomes come back to the ticket, cancelling reaches the
/// agent, and a lease not heartbeaten is taken back and offered again. Each queue's test class derives from it and
/// says how to make an empty queue (in memory: each front door has its own queue for its own agents; what makes a step
/// built once across front doors is its claim in the database, <c>step_claims</c>, tested with the metadata stores and
/// end to end in FrontDoorTests). Waits are generous and nothing
/// depends on exact timings: a lease lapses at some point after its duration, never at a given instant.
/// </summary>
public abstract class JobQueueContract
{
    /// <summary>How long anything the queue promises may take on a loaded machine before the test gives up.</summary>
    protected static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    /// <summary>A lease short enough to lapse quickly in the tests that let it.</summary>
    protected static readonly TimeSpan ShortLease = TimeSpan.FromMilliseconds(300);

    /// <summary>A lease no test lets lapse.</summary>
    protected static readonly TimeSpan LongLease = TimeSpan.FromMinutes(10);

    /// <summary>An empty queue whose leases lapse after <paramref name="leaseDuration"/> without a heartbeat.</summary>
    protected abstract IJobQueue Create(TimeSpan leaseDuration, int maxAttempts = 3);

    protected static AgentInfo Agent(string name, string system = "x86_64-linux", params string[] features) =>
        new(name, new SortedSet<string>(StringComparer.Ordinal) { system }, new SortedSet<string>(features, StringComparer.Ordinal), 1);

    protected static JobOffer Offer(long buildId, string system = "x86_64-linux", params string[] features)
    {
        var hash = new byte[20];
        BitConverter.TryWriteBytes(hash, buildId);
        var name = $"job-{buildId}";
        var job = new BuildJob
        {
            DrvPath = StorePath.FromHash(hash, $"{name}.drv"),
            Derivation = new Derivation { Name = name, Platform = system, Builder = "/bin/sh" },
            Inputs = [],
        };
        return new JobOffer(buildId, job, new JobRequirements(system, new SortedSet<string>(features, StringComparer.Ordinal)), NoLog.Instance);
    }

    private static BuildOutcome Outcome(string message, int exitCode) =>
        BuildOutcome.Failed(BuildFailureKind.PermanentFailure, message) with { ExitCode = exitCode };

    private static void AssertOutcome(BuildOutcome expected, BuildOutcome actual)
    {
        Assert.Equal(expected.Failure, actual.Failure);
        Assert.Equal(expected.ErrorMessage, actual.ErrorMessage);
        Assert.Equal(expected.ExitCode, actual.ExitCode);
    }

    // A claim given up after Patience (the test then fails on its OperationCanceledException).
    protected static async Task<ILease> ClaimAsync(IJobQueue queue, AgentInfo agent)
    {
        using var patience = new CancellationTokenSource(Patience);
        return await queue.ClaimAsync(agent, patience.Token);
    }

    private static async Task WhenCancelledAsync(CancellationToken token)
    {
        var fired = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var registration = token.Register(() => fired.TrySetResult());
        await fired.Task.WaitAsync(Patience, CancellationToken.None);
    }

    // Lets a lease lapse: waits until the queue takes it back (its token fires).
    private static Task LapseAsync(ILease lease) => WhenCancelledAsync(lease.Cancelled);

    [Fact]
    public async Task A_job_offered_before_any_claim_goes_to_the_next_claimer()
    {
        var queue = Create(LongLease);
        var agent = Agent("a");
        using var registration = queue.Register(agent);
        var ticket = queue.Offer(Offer(1));
        Assert.False(ticket.Completion.IsCompleted);

        var lease = await ClaimAsync(queue, agent);
        Assert.Equal(1, lease.Offer.BuildId);
        Assert.Equal(Offer(1).Job.DrvPath, lease.Offer.Job.DrvPath);
        Assert.False(lease.Cancelled.IsCancellationRequested);
        Assert.False(ticket.Completion.IsCompleted);
    }

    [Fact]
    public async Task A_claimer_waiting_before_the_offer_gets_it()
    {
        var queue = Create(LongLease);
        var agent = Agent("a");
        using var registration = queue.Register(agent);
        using var patience = new CancellationTokenSource(Patience);
        var claim = queue.ClaimAsync(agent, patience.Token);
        Assert.False(claim.IsCompleted);

        queue.Offer(Offer(1));
        var lease = await claim;
        Assert.Equal(1, lease.Offer.BuildId);
    }

    [Fact]
    public async Task Each_job_is_leased_to_one_claimer_only()
    {
        var queue = Create(LongLease);
        var a = Agent("a");
        var b = Agent("b");
        using var ra = queue.Register(a);
        using var rb = queue.Register(b);
        queue.Offer(Offer(1));
        queue.Offer(Offer(2));

        var first = await ClaimAsync(queue, a);
        var second = await ClaimAsync(queue, b);
        Assert.Equal([1L, 2L], new[] { first.Offer.BuildId, second.Offer.BuildId }.Order());

        using var cancel = new CancellationTokenSource();
        var third = queue.ClaimAsync(a, cancel.Token);
        queue.Offer(Offer(3));
        Assert.Equal(3, (await third.WaitAsync(Patience)).Offer.BuildId);
    }

    [Fact]
    public async Task An_agent_lacking_a_feature_never_gets_the_job()
    {
        var queue = Create(LongLease);
        var plain = Agent("plain");
        var kvm = Agent("kvm", "x86_64-linux", "kvm", "big-parallel");
        using var rp = queue.Register(plain);
        using var rk = queue.Register(kvm);
        using var patience = new CancellationTokenSource(Patience);
        var plainClaim = queue.ClaimAsync(plain, patience.Token);

        var ticket = queue.Offer(Offer(1, "x86_64-linux", "kvm"));
        Assert.False(ticket.Completion.IsCompleted); // an agent has the feature: the job waits for it

        var lease = await ClaimAsync(queue, kvm);
        Assert.Equal(1, lease.Offer.BuildId);

        // The plain agent's claim was left waiting for a job it can run, and takes the next one.
        Assert.False(plainClaim.IsCompleted);
        queue.Offer(Offer(2));
        Assert.Equal(2, (await plainClaim).Offer.BuildId);
    }

    [Fact]
    public async Task An_agent_for_another_system_never_gets_the_job()
    {
        var queue = Create(LongLease);
        var x86 = Agent("x86");
        var arm = Agent("arm", "aarch64-linux");
        using var rx = queue.Register(x86);
        using var ra = queue.Register(arm);
        using var patience = new CancellationTokenSource(Patience);
        var x86Claim = queue.ClaimAsync(x86, patience.Token);

        queue.Offer(Offer(1, "aarch64-linux"));
        Assert.Equal(1, (await ClaimAsync(queue, arm)).Offer.BuildId);

        Assert.False(x86Claim.IsCompleted);
        queue.Offer(Offer(2, "x86_64-linux"));
        Assert.Equal(2, (await x86Claim).Offer.BuildId);
    }

    private static AgentInfo StockBuilder(string name, string system = "x86_64-linux", params string[] features) =>
        Agent(name, system, features) with { StockBuilder = true };

    private static JobOffer Trusted(JobOffer offer) => offer with { Requirements = offer.Requirements with { GloballyTrusted = true } };

    [Fact]
    public async Task A_stock_builder_takes_only_globally_trusted_jobs()
    {
        var queue = Create(LongLease);
        var mac = StockBuilder("mac", "aarch64-darwin");
        using var registration = queue.Register(mac);
        using var patience = new CancellationTokenSource(Patience);
        var claim = queue.ClaimAsync(mac, patience.Token);

        // An account's own inputs (or an unverified derivation) never reach the builder's shared store: no agent can
        // run the job, so it fails at once (no placement wait here), naming what is there.
        var privateJob = queue.Offer(Offer(1, "aarch64-darwin"));
        var outcome = await privateJob.Completion.WaitAsync(Patience);
        Assert.Equal(BuildFailureKind.MiscFailure, outcome.Failure);
        Assert.False(claim.IsCompleted);

        queue.Offer(Trusted(Offer(2, "aarch64-darwin")));
        Assert.Equal(2, (await claim).Offer.BuildId);
    }

    [Fact]
    public async Task Agents_come_first_and_a_stock_builder_takes_what_they_have_no_room_for()
    {
        var queue = Create(LongLease);
        var agent = Agent("agent");
        var builder = StockBuilder("builder");
        using var ra = queue.Register(agent);
        using var rb = queue.Register(builder);
        using var patience = new CancellationTokenSource(Patience);
        var builderClaim = queue.ClaimAsync(builder, patience.Token);

        // The agent has a free slot: the job waits for it even though the builder is asking.
        queue.Offer(Trusted(Offer(1)));
        Assert.False(builderClaim.IsCompleted);
        Assert.Equal(1, (await ClaimAsync(queue, agent)).Offer.BuildId);

        // Its one slot is taken: the next job overflows to the builder.
        queue.Offer(Trusted(Offer(2)));
        Assert.Equal(2, (await builderClaim).Offer.BuildId);

        // A job only the builder's system fits goes there whatever the agents' load.
        var arm = StockBuilder("arm", "aarch64-linux");
        using var rarm = queue.Register(arm);
        queue.Offer(Trusted(Offer(3, "aarch64-linux")));
        Assert.Equal(3, (await ClaimAsync(queue, arm)).Offer.BuildId);
    }

    private static JobOffer Needing(JobOffer offer, long memory) => offer with { Requirements = offer.Requirements with { MemoryBytes = memory } };

    [Fact]
    public async Task A_job_goes_to_an_agent_only_when_the_memory_it_needs_fits_beside_the_builds_it_runs()
    {
        var queue = Create(LongLease);
        var agent = Agent("small") with { Slots = 4, MemoryBytes = 4L << 30 };
        using var registration = queue.Register(agent);

        queue.Offer(Needing(Offer(1), 3L << 30));
        var big = await ClaimAsync(queue, agent);

        // 3 GiB of its 4 are granted: a 2 GiB job waits, though a slot is free; a 1 GiB one does not.
        using var patience = new CancellationTokenSource(Patience);
        var claim = queue.ClaimAsync(agent, patience.Token);
        queue.Offer(Needing(Offer(2), 2L << 30));
        Assert.False(claim.IsCompleted);
        queue.Offer(Needing(Offer(3), 1L << 30));
        Assert.Equal(3, (await claim).Offer.BuildId);

        // The big one ends: the waiting job fits now, and goes to the claim already waiting.
        var next = queue.ClaimAsync(agent, patience.Token);
        Assert.False(next.IsCompleted);
        big.Complete(new BuildOutcome());
        Assert.Equal(2, (await next).Offer.BuildId);
    }

    [Fact]
    public async Task An_idle_agent_takes_a_job_needing_more_memory_than_it_has()
    {
        var queue = Create(LongLease);
        var agent = Agent("small") with { MemoryBytes = 1L << 30 };
        using var registration = queue.Register(agent);
        queue.Offer(Needing(Offer(1), 8L << 30));
        Assert.Equal(1, (await ClaimAsync(queue, agent)).Offer.BuildId);
    }

    [Fact]
    public async Task Builtin_jobs_run_on_any_agent()
    {
        var queue = Create(LongLease);
        var arm = Agent("arm", "aarch64-linux");
        using var registration = queue.Register(arm);

        var ticket = queue.Offer(Offer(1, "builtin"));
        Assert.False(ticket.Completion.IsCompleted);
        Assert.Equal(1, (await ClaimAsync(queue, arm)).Offer.BuildId);
    }

    [Fact]
    public async Task An_offer_no_registered_agent_can_run_fails_at_once_naming_the_requirement()
    {
        var queue = Create(LongLease);
        using var registration = queue.Register(Agent("x86", "x86_64-linux", "kvm"));
        var offer = Offer(1, "aarch64-linux", "kvm");

        var outcome = await queue.Offer(offer).Completion.WaitAsync(Patience);
        Assert.Equal(BuildFailureKind.MiscFailure, outcome.Failure);
        Assert.Contains($"a 'aarch64-linux' with features {{kvm}} is required to build '{offer.Job.DrvPath}'", outcome.ErrorMessage, StringComparison.Ordinal);

        // The right system without the feature is no better.
        var featureless = Offer(2, "x86_64-linux", "kvm", "nixos-test");
        outcome = await queue.Offer(featureless).Completion.WaitAsync(Patience);
        Assert.Equal(BuildFailureKind.MiscFailure, outcome.Failure);
        Assert.Contains($"a 'x86_64-linux' with features {{kvm, nixos-test}} is required to build '{featureless.Job.DrvPath}'", outcome.ErrorMessage, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Without_agents_every_offer_fails_at_once()
    {
        var queue = Create(LongLease);
        var outcome = await queue.Offer(Offer(1)).Completion.WaitAsync(Patience);
        Assert.Equal(BuildFailureKind.MiscFailure, outcome.Failure);
        Assert.Contains("a 'x86_64-linux' is required to build", outcome.ErrorMessage, StringComparison.Ordinal);

        // A withdrawn agent no longer counts.
        queue.Register(Agent("gone")).Dispose();
        outcome = await queue.Offer(Offer(2)).Completion.WaitAsync(Patience);
        Assert.Equal(BuildFailureKind.MiscFailure, outcome.Failure);
    }

    [Fact]
    public async Task Complete_delivers_the_agents_outcome_to_the_ticket()
    {
        var queue = Create(LongLease);
        var agent = Agent("a");
        using var registration = queue.Register(agent);
        var ticket = queue.Offer(Offer(1));
        var lease = await ClaimAsync(queue, agent);
        lease.Heartbeat();
        Assert.False(ticket.Completion.IsCompleted);

        var outcome = Outcome("builder for 'job-1.drv' failed with exit code 2", 2);
        lease.Complete(outcome);
        AssertOutcome(outcome, await ticket.Completion.WaitAsync(Patience));

        var success = new BuildOutcome { Failure = BuildFailureKind.None };
        var next = queue.Offer(Offer(2));
        (await ClaimAsync(queue, agent)).Complete(success);
        Assert.True((await next.Completion.WaitAsync(Patience)).Succeeded);
    }

    [Fact]
    public async Task Cancelling_a_waiting_job_completes_it_as_cancelled_and_no_agent_claims_it()
    {
        var queue = Create(LongLease);
        var agent = Agent("a");
        using var registration = queue.Register(agent);
        var offer = Offer(1);
        var ticket = queue.Offer(offer);

        ticket.Cancel();
        var outcome = await ticket.Completion.WaitAsync(Patience);
        Assert.Equal(BuildFailureKind.MiscFailure, outcome.Failure);
        Assert.Contains("cancelled", outcome.ErrorMessage, StringComparison.Ordinal);
        ticket.Cancel(); // twice is harmless

        // The next claim gets the job offered after it, not the cancelled one.
        queue.Offer(Offer(2));
        Assert.Equal(2, (await ClaimAsync(queue, agent)).Offer.BuildId);
    }

    [Fact]
    public async Task Cancelling_a_leased_job_tells_its_agent_and_the_ticket_gets_the_agents_outcome()
    {
        var queue = Create(LongLease);
        var agent = Agent("a");
        using var registration = queue.Register(agent);
        var ticket = queue.Offer(Offer(1));
        var lease = await ClaimAsync(queue, agent);

        ticket.Cancel();
        await WhenCancelledAsync(lease.Cancelled);
        Assert.False(ticket.Completion.IsCompleted); // the agent says how its build ended

        var outcome = Outcome("the build of 'job-1.drv' was cancelled", 130);
        lease.Complete(outcome);
        AssertOutcome(outcome, await ticket.Completion.WaitAsync(Patience));
    }

    [Fact]
    public async Task A_cancelled_job_its_agent_abandons_completes_as_cancelled_and_is_not_offered_again()
    {
        var queue = Create(LongLease);
        var agent = Agent("a");
        using var registration = queue.Register(agent);
        var ticket = queue.Offer(Offer(1));
        var lease = await ClaimAsync(queue, agent);

        ticket.Cancel();
        lease.Abandon("the agent is stopping");
        var outcome = await ticket.Completion.WaitAsync(Patience);
        Assert.Equal(BuildFailureKind.MiscFailure, outcome.Failure);
        Assert.Contains("cancelled", outcome.ErrorMessage, StringComparison.Ordinal);

        queue.Offer(Offer(2));
        Assert.Equal(2, (await ClaimAsync(queue, agent)).Offer.BuildId);
    }

    [Fact]
    public async Task A_lease_not_heartbeaten_is_taken_back_and_the_job_offered_again()
    {
        var queue = Create(ShortLease);
        var a = Agent("a");
        var b = Agent("b");
        using var ra = queue.Register(a);
        using var rb = queue.Register(b);
        var ticket = queue.Offer(Offer(1));
        var first = await ClaimAsync(queue, a);

        // a goes silent: its lease is taken back, and b's claim gets the job.
        var second = await ClaimAsync(queue, b);
        Assert.Equal(1, second.Offer.BuildId);
        await LapseAsync(first);
        Assert.False(ticket.Completion.IsCompleted);

        second.Heartbeat();
        var outcome = Outcome("built by b", 1);
        second.Complete(outcome);
        AssertOutcome(outcome, await ticket.Completion.WaitAsync(Patience));
    }

    [Fact]
    public async Task A_lease_heartbeaten_in_time_is_kept()
    {
        var lease = TimeSpan.FromSeconds(2);
        var queue = Create(lease);
        var a = Agent("a");
        var b = Agent("b");
        using var ra = queue.Register(a);
        using var rb = queue.Register(b);
        var ticket = queue.Offer(Offer(1));
        var held = await ClaimAsync(queue, a);
        using var cancel = new CancellationTokenSource();
        var other = queue.ClaimAsync(b, cancel.Token);

        // Heartbeats far more often than the lease needs, for longer than the lease lasts.
        var until = DateTime.UtcNow + (lease * 2);
        while (DateTime.UtcNow < until)
        {
            held.Heartbeat();
            await Task.Delay(100);
        }

        Assert.False(held.Cancelled.IsCancellationRequested);
        Assert.False(other.IsCompleted);
        var outcome = Outcome("built by a", 1);
        held.Complete(outcome);
        AssertOutcome(outcome, await ticket.Completion.WaitAsync(Patience));

        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => other.WaitAsync(Patience));
    }

    [Fact]
    public async Task After_max_attempts_lapse_the_ticket_completes_with_a_failure()
    {
        var queue = Create(ShortLease, maxAttempts: 2);
        var agent = Agent("a");
        using var registration = queue.Register(agent);
        var offer = Offer(1);
        var ticket = queue.Offer(offer);

        var first = await ClaimAsync(queue, agent);
        await LapseAsync(first);
        Assert.False(ticket.Completion.IsCompleted);
        var second = await ClaimAsync(queue, agent);
        Assert.Equal(1, second.Offer.BuildId);
        await LapseAsync(second);

        var outcome = await ticket.Completion.WaitAsync(Patience);
        Assert.Equal(BuildFailureKind.MiscFailure, outcome.Failure);
        Assert.Contains(offer.Job.DrvPath.FullPath, outcome.ErrorMessage, StringComparison.Ordinal);
        Assert.Equal(2, ticket.Attempts);

        // It is not offered a third time: the next claim gets the next job.
        queue.Offer(Offer(2));
        Assert.Equal(2, (await ClaimAsync(queue, agent)).Offer.BuildId);
    }

    [Fact]
    public async Task Abandon_offers_the_job_again()
    {
        var queue = Create(LongLease);
        var a = Agent("a");
        var b = Agent("b");
        using var ra = queue.Register(a);
        using var rb = queue.Register(b);
        var ticket = queue.Offer(Offer(1));
        var first = await ClaimAsync(queue, a);

        first.Abandon("agent a is stopping");
        Assert.False(ticket.Completion.IsCompleted);
        var second = await ClaimAsync(queue, b);
        Assert.Equal(1, second.Offer.BuildId);
        Assert.False(second.Cancelled.IsCancellationRequested);

        var outcome = Outcome("built by b", 1);
        second.Complete(outcome);
        AssertOutcome(outcome, await ticket.Completion.WaitAsync(Patience));
        Assert.Equal(2, ticket.Attempts);
    }

    [Fact]
    public async Task A_late_Complete_on_a_lease_taken_back_is_ignored()
    {
        var queue = Create(ShortLease);
        var a = Agent("a");
        var b = Agent("b");
        using var ra = queue.Register(a);
        using var rb = queue.Register(b);
        var ticket = queue.Offer(Offer(1));
        var stale = await ClaimAsync(queue, a);
        await LapseAsync(stale);
        var current = await ClaimAsync(queue, b);
        Assert.Equal(1, current.Offer.BuildId);

        stale.Complete(Outcome("built by a, too late", 1));
        Assert.False(ticket.Completion.IsCompleted);
        Assert.False(current.Cancelled.IsCancellationRequested);

        current.Heartbeat();
        var outcome = Outcome("built by b", 2);
        current.Complete(outcome);
        AssertOutcome(outcome, await ticket.Completion.WaitAsync(Patience));
    }

    [Fact]
    public async Task A_late_Abandon_on_a_lease_taken_back_is_ignored()
    {
        var queue = Create(ShortLease);
        var a = Agent("a");
        var b = Agent("b");
        using var ra = queue.Register(a);
        using var rb = queue.Register(b);
        var ticket = queue.Offer(Offer(1));
        var stale = await ClaimAsync(queue, a);
        await LapseAsync(stale);
        var current = await ClaimAsync(queue, b);
        current.Heartbeat();

        // Agent a comes back, finds its build cancelled, and gives the job back: that is not b's lease to end.
        stale.Abandon("agent a is stopping");
        Assert.False(current.Cancelled.IsCancellationRequested);
        Assert.False(ticket.Completion.IsCompleted);

        current.Heartbeat();
        var outcome = Outcome("built by b", 2);
        current.Complete(outcome);
        AssertOutcome(outcome, await ticket.Completion.WaitAsync(Patience));
    }

    [Fact]
    public async Task ClaimAsync_honours_its_cancellation_token()
    {
        var queue = Create(LongLease);
        var agent = Agent("a");
        using var registration = queue.Register(agent);

        using var cancel = new CancellationTokenSource();
        var claim = queue.ClaimAsync(agent, cancel.Token);
        Assert.False(claim.IsCompleted);
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => claim.WaitAsync(Patience));

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => queue.ClaimAsync(agent, cancel.Token).WaitAsync(Patience));

        // The cancelled claims took nothing: the next offer goes to the next claim.
        var ticket = queue.Offer(Offer(1));
        var lease = await ClaimAsync(queue, agent);
        Assert.Equal(1, lease.Offer.BuildId);
        Assert.False(ticket.Completion.IsCompleted);
    }

    [Fact]
    public async Task A_job_released_undelivered_is_offered_again_without_using_an_attempt_and_a_late_report_is_refused()
    {
        var queue = Create(LongLease, maxAttempts: 1);
        var agent = Agent("a");
        using var registration = queue.Register(agent);
        var ticket = queue.Offer(Offer(1));
        for (var i = 0; i < 3; i++)
        {
            var undelivered = await ClaimAsync(queue, agent);
            Assert.True(undelivered.IsCurrent);
            undelivered.Release();
            Assert.False(undelivered.IsCurrent);
            Assert.False(undelivered.Complete(Outcome("late", 1)));
        }

        var lease = await ClaimAsync(queue, agent);
        Assert.False(ticket.Completion.IsCompleted);
        Assert.True(lease.Complete(Outcome("done", 2)));
        Assert.Equal(2, (await ticket.Completion.WaitAsync(Patience)).ExitCode);
        Assert.Equal(1, ticket.Attempts); // the releases were not attempts
    }

    [Fact]
    public async Task One_accounts_many_jobs_do_not_stall_another_accounts_one()
    {
        var queue = Create(LongLease);
        var agent = Agent("a");
        using var registration = queue.Register(agent);
        for (var i = 1; i <= 50; i++)
        {
            queue.Offer(Offer(i) with { Account = 1 });
        }

        queue.Offer(Offer(100) with { Account = 2 });
        queue.Offer(Offer(200) with { Account = 3 });
        queue.Offer(Offer(51) with { Account = 1 });

        // Round-robin between accounts with work waiting, first come first served within each.
        var order = new List<long>();
        for (var i = 0; i < 53; i++)
        {
            order.Add((await ClaimAsync(queue, agent)).Offer.BuildId);
        }

        Assert.Equal([1, 100, 200, 2, 3], order.Take(5));
        Assert.Equal(Enumerable.Range(1, 51).Select(i => (long)i), order.Where(id => id < 100));
    }

    [Fact]
    public async Task An_accounts_max_jobs_holds_back_its_further_jobs_until_one_of_its_running_ends()
    {
        var queue = Create(LongLease);
        var agent = Agent("a") with { Slots = 8 };
        using var registration = queue.Register(agent);
        for (var i = 1; i <= 4; i++)
        {
            queue.Offer(Offer(i) with { Account = 1, AccountMaxJobs = 2 });
        }

        queue.Offer(Offer(100) with { Account = 2 });

        // The agent has room for all five; account 1 runs two at once, account 2 is not held back by it.
        var running = new List<ILease>();
        for (var i = 0; i < 3; i++)
        {
            running.Add(await ClaimAsync(queue, agent));
        }

        Assert.Equal([1, 2, 100], running.Select(l => l.Offer.BuildId).Order());
        using var patience = new CancellationTokenSource(Patience);
        var next = queue.ClaimAsync(agent, patience.Token);
        await Task.Delay(300);
        Assert.False(next.IsCompleted);

        // Account 2's job ending frees nothing of account 1's; one of account 1's ending lets its next one run.
        Assert.True(running.Single(l => l.Offer.BuildId == 100).Complete(BuildOutcome.Failed(BuildFailureKind.PermanentFailure, "done")));
        await Task.Delay(300);
        Assert.False(next.IsCompleted);
        Assert.True(running.Single(l => l.Offer.BuildId == 1).Complete(BuildOutcome.Failed(BuildFailureKind.PermanentFailure, "done")));
        Assert.Equal(3, (await next.WaitAsync(Patience)).Offer.BuildId);
    }

    [Fact]
    public async Task A_job_held_by_its_accounts_max_jobs_runs_once_another_account_wants_it_too()
    {
        var queue = Create(LongLease);
        var agent = Agent("a") with { Slots = 8 };
        using var registration = queue.Register(agent);
        queue.Offer(Offer(1) with { Account = 1, AccountMaxJobs = 1 });
        var held = queue.Offer(Offer(2) with { Account = 1, AccountMaxJobs = 1 });
        Assert.Equal(1, (await ClaimAsync(queue, agent)).Offer.BuildId);
        using var patience = new CancellationTokenSource(Patience);
        var next = queue.ClaimAsync(agent, patience.Token);
        await Task.Delay(300);
        Assert.False(next.IsCompleted);

        held.LiftAccountLimit();
        Assert.Equal(2, (await next.WaitAsync(Patience)).Offer.BuildId);
    }

    protected sealed class LineLog : IBuildLog
    {
        public ConcurrentQueue<string> Lines { get; } = new();

        public void Running()
        {
        }

        public void Line(string line) => Lines.Enqueue(line);

        public ConcurrentQueue<string> Notes { get; } = new();

        public void NoteFor(long account, string line) => Notes.Enqueue($"{line}");
    }

    private sealed class NoLog : IBuildLog
    {
        public static readonly NoLog Instance = new();

        public void Running()
        {
        }

        public void Line(string line)
        {
        }
    }
}

/// <summary>The contract, run against the embedded in-memory queue.</summary>
public sealed class InMemoryJobQueueTests : JobQueueContract, IDisposable
{
    private readonly List<InMemoryJobQueue> _queues = [];

    protected override IJobQueue Create(TimeSpan leaseDuration, int maxAttempts = 3)
    {
        var queue = new InMemoryJobQueue(leaseDuration) { MaxAttempts = maxAttempts };
        _queues.Add(queue);
        return queue;
    }

    [Fact]
    public async Task A_job_goes_to_the_waiting_agent_holding_most_of_its_inputs_then_to_the_least_loaded()
    {
        var (a, b) = (Agent("a") with { Slots = 2 }, Agent("b") with { Slots = 2 });
        var holder = "b";
        using var queue = new InMemoryJobQueue(LongLease) { Affinity = (agent, offer) => agent.Name == holder && offer.BuildId >= 10 ? 1000 : 0 };
        using var ra = queue.Register(a);
        using var rb = queue.Register(b);
        using var patience = new CancellationTokenSource(Patience);

        // Both wait; the job whose inputs b holds goes to b although a asked first.
        var fromA = queue.ClaimAsync(a, patience.Token);
        var fromB = queue.ClaimAsync(b, patience.Token);
        queue.Offer(Offer(10));
        Assert.Equal(10, (await fromB).Offer.BuildId);
        Assert.False(fromA.IsCompleted);

        // Nobody holds anything of job 1: it goes to the least loaded (a: nothing running; b: one).
        fromB = queue.ClaimAsync(b, patience.Token);
        queue.Offer(Offer(1));
        Assert.Equal(1, (await fromA).Offer.BuildId);
        Assert.False(fromB.IsCompleted);
    }

    // The wait is the in-memory queue's setting (kiln serve --agent-wait).
    [Fact]
    public async Task A_job_no_agent_can_run_yet_waits_for_one_then_fails_saying_what_it_waited_for()
    {
        using var queue = new InMemoryJobQueue(LongLease) { PlacementWait = TimeSpan.FromSeconds(2) };
        var log = new LineLog();
        using var x86 = queue.Register(Agent("x86"));
        var early = queue.Offer(Offer(1, "aarch64-linux") with { Log = log });
        Assert.Contains(log.Lines, l => l.Contains("waiting for an agent with system aarch64-linux", StringComparison.Ordinal));

        // An agent that can run it connects within the wait: it gets the job.
        using var arm = queue.Register(Agent("arm", "aarch64-linux"));
        var lease = await ClaimAsync(queue, Agent("arm", "aarch64-linux"));
        Assert.Equal(1, lease.Offer.BuildId);
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.False(early.Completion.IsCompleted);
        arm.Dispose();

        // None connects: after the wait it fails with Nix's words.
        var late = queue.Offer(Offer(2, "riscv64-linux", "kvm"));
        var outcome = await late.Completion.WaitAsync(Patience);
        Assert.Contains("a 'riscv64-linux' with features {kvm} is required to build", outcome.ErrorMessage, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_job_held_back_by_its_accounts_max_jobs_says_so_in_its_log()
    {
        using var queue = new InMemoryJobQueue(LongLease) { SlotWaitNotice = TimeSpan.FromMilliseconds(100) };
        using var registration = queue.Register(Agent("a") with { Slots = 8 });
        var log = new LineLog();
        queue.Offer(Offer(1) with { Account = 1, AccountMaxJobs = 1 });
        queue.Offer(Offer(2) with { Account = 1, AccountMaxJobs = 1 });
        queue.Offer(Offer(3) with { Account = 1, AccountMaxJobs = 1, Log = log });
        Assert.Equal(1, (await ClaimAsync(queue, Agent("a") with { Slots = 8 })).Offer.BuildId);
        var deadline = DateTime.UtcNow + Patience;
        while (log.Notes.IsEmpty && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }

        Assert.Equal($"kiln: waiting for a build slot for '{Offer(3).Job.DrvPath}': account limit 1 running, 1 queued ahead", Assert.Single(log.Notes));
        Assert.Empty(log.Lines); // only that account's sessions are told, not the build's log
    }

    public void Dispose()
    {
        foreach (var queue in _queues)
        {
            queue.Dispose();
        }
    }
}
