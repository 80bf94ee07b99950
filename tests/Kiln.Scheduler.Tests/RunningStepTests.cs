using Kiln.Agent;
using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;

namespace Kiln.Scheduler.Tests;

/// <summary>What the sessions waiting for one step hear: lines for one account only reach that account's sessions.</summary>
public sealed class RunningStepTests : IDisposable
{
    private const string SlotNote = "kiln: waiting for a build slot for 'x': account limit 1 running on Kiln's front doors";

    private readonly RunningStep _step = new("x", new BuildJob
    {
        DrvPath = StorePath.FromHash(new byte[20], "x.drv"),
        Derivation = new Derivation { Name = "x", Platform = "x86_64-linux", Builder = "/bin/sh" },
        Inputs = [],
    }, startedFor: 1, backlogLimit: 100);

    private readonly TaskCompletionSource<StepOutcome> _done = new();
    private readonly List<Task<StepOutcome>> _waits = [];

    public RunningStepTests() => _step.Completion = _done.Task;

    public void Dispose() => _step.Dispose();

    [Fact]
    public async Task A_note_for_an_account_reaches_its_sessions_that_join_later_while_the_build_waits_and_no_other_accounts()
    {
        // The claim loop notes the account's limit at once, often before the session that started the step has joined.
        _step.NoteFor(1, SlotNote);
        Assert.Contains(SlotNote, Join(1));
        Assert.DoesNotContain(SlotNote, Join(2)); // another account's limit is none of its business

        // Once it runs it waits no more: a session joining then is not told it does.
        _step.Running();
        Assert.DoesNotContain(SlotNote, Join(1));

        // A note that comes once it runs (the queue notes outside its own lock) is not kept for later sessions either.
        _step.NoteFor(1, SlotNote);
        Assert.DoesNotContain(SlotNote, Join(1));
        await FinishAsync();
    }

    [Fact]
    public async Task A_note_is_dropped_once_the_step_no_longer_waits_for_the_accounts_slot()
    {
        _step.NoteFor(1, SlotNote);
        _step.WaitsForAccountSlot = true;

        // Another front door builds it now (or this one claimed it): the limit is no longer why it waits.
        _step.WaitsForAccountSlot = false;
        Assert.DoesNotContain(SlotNote, Join(1));
        await FinishAsync();
    }

    // A session of the account joins the step; what its client has heard so far.
    private List<string> Join(long account)
    {
        var events = new Events();
        Assert.True(_step.TryReserve());
        _waits.Add(_step.JoinAsync(events, new BuildLimits(), account, TestContext.Current.CancellationToken));
        return events.Lines;
    }

    private async Task FinishAsync()
    {
        _done.SetResult(new StepOutcome(new BuildOutcome(), 1, Reused: false));
        await Task.WhenAll(_waits);
    }
}
