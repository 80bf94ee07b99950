using Kiln.Agent;
using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;

namespace Kiln.Scheduler.Tests;

/// <summary>What the sessions waiting for one step hear: lines for one account only reach that account's sessions.</summary>
public class RunningStepTests
{
    private const string SlotNote = "kiln: waiting for a build slot for 'x': account limit 1 running on Kiln's front doors";

    [Fact]
    public async Task A_note_for_an_account_reaches_its_sessions_that_join_later_while_the_build_waits_and_no_other_accounts()
    {
        using var step = NewStep();
        var done = new TaskCompletionSource<StepOutcome>();
        step.Completion = done.Task;

        // The claim loop notes the account's limit at once, often before the session that started the step has joined.
        step.NoteFor(1, SlotNote);
        Task<StepOutcome> Join(Events events, long account)
        {
            Assert.True(step.TryReserve());
            return step.JoinAsync(events, new BuildLimits(), account, TestContext.Current.CancellationToken);
        }

        var alice = new Events();
        var bob = new Events();
        var waits = new List<Task<StepOutcome>> { Join(alice, 1), Join(bob, 2) };
        Assert.Contains(SlotNote, alice.Lines);
        Assert.DoesNotContain(SlotNote, bob.Lines); // another account's limit is none of its business

        // Once it runs it waits no more: a session joining then is not told it does.
        step.Running();
        var late = new Events();
        waits.Add(Join(late, 1));
        Assert.DoesNotContain(SlotNote, late.Lines);

        // A note that comes once it runs (the queue notes outside its own lock) is not kept for later sessions either.
        step.NoteFor(1, SlotNote);
        var later = new Events();
        waits.Add(Join(later, 1));
        Assert.DoesNotContain(SlotNote, later.Lines);

        done.SetResult(new StepOutcome(new BuildOutcome(), 1, Reused: false));
        await Task.WhenAll(waits);
    }

    [Fact]
    public async Task A_note_is_dropped_once_the_step_no_longer_waits_for_the_accounts_slot()
    {
        using var step = NewStep();
        var done = new TaskCompletionSource<StepOutcome>();
        step.Completion = done.Task;
        step.NoteFor(1, SlotNote);
        step.WaitsForAccountSlot = true;

        // Another front door builds it now (or this one claimed it): the limit is no longer why it waits.
        step.WaitsForAccountSlot = false;
        var alice = new Events();
        Assert.True(step.TryReserve());
        var waits = step.JoinAsync(alice, new BuildLimits(), 1, TestContext.Current.CancellationToken);
        Assert.DoesNotContain(SlotNote, alice.Lines);

        done.SetResult(new StepOutcome(new BuildOutcome(), 1, Reused: false));
        await waits;
    }

    private static RunningStep NewStep() => new("x", new BuildJob
    {
        DrvPath = StorePath.FromHash(new byte[20], "x.drv"),
        Derivation = new Derivation { Name = "x", Platform = "x86_64-linux", Builder = "/bin/sh" },
        Inputs = [],
    }, startedFor: 1, backlogLimit: 100);
}
