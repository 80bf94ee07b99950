using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;
using Kiln.Scheduler.Queue;
using Kiln.Store;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// The scheduler over a real store (SQLite, blobs) with an executor that records its jobs instead of running
/// builders: the graph is walked dependencies first, each step runs once for everyone, a session asking while it
/// runs joins it, failures propagate as Nix's statuses, and slots bound concurrency.
/// </summary>
public sealed class SchedulerTests : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private KilnStore _store = null!;
    private RecordingExecutor _executor = null!;
    private BuildScheduler _scheduler = null!;
    private InMemoryJobQueue _queue = null!;
    private EmbeddedAgent _agent = null!;
    private TestDerivations _derivations = null!;

    public async ValueTask InitializeAsync()
    {
        _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"] }, default);
        _derivations = new TestDerivations(_store);
        _executor = new RecordingExecutor(new LocalAgentStore(_store.Blobs), slots: 2);
        _queue = new InMemoryJobQueue();
        _agent = new EmbeddedAgent(_queue, _executor, new AgentInfo("test", new SortedSet<string> { "x86_64-linux" }, new SortedSet<string> { "big-parallel" }, _executor.Slots),
            NullLogger.Instance, TimeSpan.FromSeconds(1));
        _scheduler = new BuildScheduler(_store.Builds, _store.Blobs, _queue, _store.Logs, new SchedulerOptions(), null, NullLogger.Instance);
    }

    public async ValueTask DisposeAsync()
    {
        await _agent.DisposeAsync();
        _queue.Dispose();
        await _store.DisposeAsync();
        _temp.Dispose();
    }

    // Writes an input-addressed derivation depending on the "out" outputs of `inputs` into the account's view, the
    // way evaluation does (AddTextToStore), and returns its path.
    private Task<StorePath> DerivationAsync(string account, string name, params StorePath[] inputs) => _derivations.WriteAsync(account, name, inputs);

    private Task<(IReadOnlyList<BuildResult> Results, Events Events)> BuildAsync(string account, bool keepGoing, params StorePath[] drvs) =>
        BuildWithAsync(account, new ClientBuildSettings { KeepGoing = keepGoing }, drvs);

    private async Task<(IReadOnlyList<BuildResult> Results, Events Events)> BuildWithAsync(string account, ClientBuildSettings settings, params StorePath[] drvs)
    {
        using var view = await _store.OpenViewAsync(account, default);
        var events = new Events();
        var results = await _scheduler.ForSession(view).BuildPathsAsync(drvs.Select(d => (DerivedPath)new DerivedPath.Built(d, null)).ToList(), settings, events, default);
        return (results, events);
    }

    private async Task<bool> ValidAsync(string account, StorePath path)
    {
        using var view = await _store.OpenViewAsync(account, default);
        return (await view.QueryValidPathsAsync([path], default)).Contains(path);
    }

    private StorePath Out(StorePath drv) => _derivations[drv].Outputs["out"].StorePath!.Value;

    [Fact]
    public async Task A_graph_is_built_dependencies_first_each_derivation_once()
    {
        // A diamond: top needs left and right, both need bottom.
        var bottom = await DerivationAsync("a", "bottom");
        var left = await DerivationAsync("a", "left", bottom);
        var right = await DerivationAsync("a", "right", bottom);
        var top = await DerivationAsync("a", "top", left, right);

        var (results, _) = await BuildAsync("a", keepGoing: false, top);

        Assert.Equal(BuildStatus.Built, results.Single().Status);
        var jobs = _executor.Jobs.ToList();
        Assert.Equal(4, jobs.Count);
        Assert.Equal("bottom", jobs[0].Derivation.Name);
        Assert.Equal("top", jobs[3].Derivation.Name);
        // A build gets the closure of the outputs it depends on; these refer to nothing, so top gets left and right.
        Assert.Equal(new[] { Out(left), Out(right) }.Order(), jobs[3].Inputs.Select(i => i.Path).Order());
        foreach (var drv in new[] { bottom, left, right, top })
        {
            Assert.True(await ValidAsync("a", Out(drv)));
        }

        // Asking again builds nothing.
        var (again, _) = await BuildAsync("a", keepGoing: false, top);
        Assert.Equal(BuildStatus.AlreadyValid, again.Single().Status);
        Assert.Equal(4, _executor.Jobs.Count);
    }

    [Fact]
    public async Task A_finished_build_whose_outputs_were_collected_is_built_again_not_registered_without_content()
    {
        // 20.3: a builds; a's GC deletes the output, and its blob (nothing else names it) goes. b then asks for the
        // same build: the scheduler still remembers the outcome, and registering it would make the path valid in b's
        // view with no content behind it, never rebuilt. The registration checks the blob under the GC's lock instead.
        var drv = await DerivationAsync("a", "collected");
        await DerivationAsync("b", "collected");
        Assert.Equal(BuildStatus.Built, (await BuildAsync("a", keepGoing: false, drv)).Results.Single().Status);
        var narHash = _executor.Jobs.Count == 1 ? await NarHashAsync("a", Out(drv)) : throw new InvalidOperationException("one build expected");
        using (var view = await _store.OpenViewAsync("a", default))
        {
            var collected = await view.CollectGarbageAsync(new GcRequest(GcAction.DeleteSpecific, new HashSet<StorePath> { Out(drv) }, 0), default);
            Assert.Equal([Out(drv)], collected.Paths);
        }

        Assert.False(await _store.Blobs.HasAsync(narHash, default));

        var (results, _) = await BuildAsync("b", keepGoing: false, drv);
        Assert.Equal(BuildStatus.Built, results.Single().Status);
        Assert.Equal(2, _executor.Jobs.Count);
        Assert.True(await ValidAsync("b", Out(drv)));
        Assert.True(await _store.Blobs.HasAsync(await NarHashAsync("b", Out(drv)), default));
    }

    private async Task<NixHash> NarHashAsync(string account, StorePath path)
    {
        using var view = await _store.OpenViewAsync(account, default);
        return (await view.QueryPathInfosAsync([path], default))[path].NarHash;
    }

    [Fact]
    public async Task A_session_asking_for_a_running_build_joins_it_and_gets_its_log()
    {
        var drv = await DerivationAsync("a", "shared");
        await DerivationAsync("b", "shared"); // the same derivation, written by another account
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        var first = BuildAsync("a", keepGoing: false, drv);
        await WaitUntil(() => _executor.Jobs.Count == 1);
        var second = BuildAsync("b", keepGoing: false, drv);
        await Task.Delay(200); // let the second session reach the running step
        _executor.Gate.SetResult();
        var (firstResults, firstEvents) = await first;
        var (secondResults, secondEvents) = await second;

        Assert.Single(_executor.Jobs);
        Assert.Equal(BuildStatus.Built, firstResults.Single().Status);
        Assert.Equal(BuildStatus.Built, secondResults.Single().Status);
        Assert.Equal(["building shared.drv", "done"], firstEvents.Lines);
        // The joining session is told it joined (only it), then gets the backlog and the live line.
        Assert.Matches($"^kiln: joining a build of '{drv}' started [0-9]+ s ago$", secondEvents.Lines[0]);
        Assert.Equal(["building shared.drv", "done"], secondEvents.Lines[1..]);
        Assert.True(await ValidAsync("a", Out(drv)));
        Assert.True(await ValidAsync("b", Out(drv)));
    }

    [Fact]
    public async Task Cancelling_for_one_account_ends_its_wait_and_the_build_stops_only_when_nobody_else_waits()
    {
        var drv = await DerivationAsync("a", "cancelled");
        await DerivationAsync("b", "cancelled");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var first = BuildAsync("a", keepGoing: false, drv);
        await WaitUntil(() => _executor.Jobs.Count == 1);
        var second = BuildAsync("b", keepGoing: false, drv);
        await WaitUntil(() => _store.Builds.ListBuildsAsync(null, 10, default).Result is [{ Running: true }]);
        var id = (await _store.Builds.ListBuildsAsync(null, 10, default)).Single().Id;
        var a = await _store.Accounts.GetOrCreateAccountAsync("a", default);
        var b = await _store.Accounts.GetOrCreateAccountAsync("b", default);
        await WaitUntil(() => _store.Builds.GetBuildAsync(b, id, default).Result is not null); // b has joined (its wait is registered before that)
        Assert.True(_scheduler.Cancel(id, a));

        // a's request fails with the reason; b's still waits, and gets the build.
        var (aResults, _) = await first.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(BuildStatus.MiscFailure, aResults.Single().Status);
        Assert.Contains($"the build of '{drv}' was cancelled through Kiln's API", aResults.Single().ErrorMessage, StringComparison.Ordinal);
        Assert.False(second.IsCompleted);
        Assert.False(_scheduler.Cancel(id, a)); // nothing of a's waits any more
        _executor.Gate.SetResult();
        Assert.Equal(BuildStatus.Built, (await second).Results.Single().Status);
        Assert.True((await _store.Builds.ListBuildsAsync(null, 10, default)).Single().Succeeded);

        // Alone, a's cancel stops the build, and the record says why.
        var alone = await DerivationAsync("a", "cancelled-alone");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var third = BuildAsync("a", keepGoing: false, alone);
        await WaitUntil(() => _store.Builds.ListBuildsAsync(null, 10, default).Result is [{ Running: true }, ..]);
        var aloneId = (await _store.Builds.ListBuildsAsync(null, 10, default))[0].Id;
        var cancelled = false;
        await WaitUntil(() => cancelled |= _scheduler.Cancel(aloneId, a));
        Assert.False(_scheduler.Cancel(aloneId, a)); // a second cancel finds nothing left to stop
        Assert.False(_scheduler.Cancel(aloneId, b));
        Assert.Equal(BuildStatus.MiscFailure, (await third.WaitAsync(TimeSpan.FromSeconds(30))).Results.Single().Status);
        await WaitUntil(() => _store.Builds.ListBuildsAsync(null, 10, default).Result[0] is { Running: false });
        var record = (await _store.Builds.ListBuildsAsync(null, 10, default))[0];
        Assert.False(record.Succeeded);
        Assert.Contains("cancelled through Kiln's API", record.Error, StringComparison.Ordinal);
    }

    // By derivation (what the API offers for a build with no record yet): only the caller's account's requests end, and
    // another derivation's are untouched.
    [Fact]
    public async Task Cancelling_by_derivation_ends_the_accounts_requests_for_it_only()
    {
        var drv = await DerivationAsync("a", "by-derivation");
        var other = await DerivationAsync("a", "by-derivation-other");
        await DerivationAsync("b", "by-derivation");
        var a = await _store.Accounts.GetOrCreateAccountAsync("a", default);
        var b = await _store.Accounts.GetOrCreateAccountAsync("b", default);
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var first = BuildAsync("a", keepGoing: false, drv);
        var second = BuildAsync("a", keepGoing: false, other);
        await WaitUntil(() => _executor.Jobs.Count == 2);

        Assert.Equal(0, _scheduler.CancelDerivation(drv, b)); // b asked for nothing here
        Assert.Equal(1, _scheduler.CancelDerivation(drv, a));
        var (results, _) = await first.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(BuildStatus.MiscFailure, results.Single().Status);
        Assert.Contains($"the build of '{drv}' was cancelled through Kiln's API", results.Single().ErrorMessage, StringComparison.Ordinal);
        // Its outcome has no times: 0, not year 1's negative Unix time, which Nix 2.34 refused to read.
        Assert.Equal((0L, 0L), (results.Single().StartTime, results.Single().StopTime));
        Assert.False(second.IsCompleted);
        Assert.Equal(0, _scheduler.CancelDerivation(drv, a)); // nothing of a's waits for it any more
        _executor.Gate.SetResult();
        Assert.Equal(BuildStatus.Built, (await second.WaitAsync(TimeSpan.FromSeconds(30))).Results.Single().Status);
    }

    [Fact]
    public async Task The_queue_shows_an_account_its_own_builds_running_and_waiting_in_line()
    {
        // Two slots: a's first two builds run, its third and b's wait in line.
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var aDrvs = new List<StorePath>();
        for (var i = 0; i < 3; i++)
        {
            aDrvs.Add(await DerivationAsync("a", $"queued-{i}"));
        }

        var bDrv = await DerivationAsync("b", "queued-b");
        var a = await _store.Accounts.GetOrCreateAccountAsync("a", default);
        var b = await _store.Accounts.GetOrCreateAccountAsync("b", default);
        var aBuild = BuildAsync("a", keepGoing: true, [.. aDrvs]);
        // a's third build must be in line (not still being prepared) before b's joins it, or b's could go first.
        await WaitUntil(() => _executor.Jobs.Count == 2 && _scheduler.QueueFor(a).Steps.Count(s => s.State == QueuedState.Waiting) == 1);
        var bBuild = BuildAsync("b", keepGoing: false, bDrv);
        await WaitUntil(() => _scheduler.QueueFor(b).Steps.Count == 1 && _scheduler.QueueFor(b).Steps[0].State == QueuedState.Waiting);

        var (waiting, steps) = _scheduler.QueueFor(a);
        Assert.Equal(2, waiting);
        Assert.Equal([QueuedState.Running, QueuedState.Running, QueuedState.Waiting], steps.Select(s => s.State));
        Assert.All(steps.Take(2), s => Assert.Equal("test", s.Agent));
        Assert.Equal(1, steps[2].Position);
        Assert.Equal(aDrvs.ToHashSet(), steps.Select(s => s.DrvPath).ToHashSet());
        var bSteps = _scheduler.QueueFor(b).Steps;
        Assert.Equal((bDrv, 2), (bSteps.Single().DrvPath, bSteps.Single().Position)); // b sees its own build only
        Assert.Empty(_scheduler.QueueFor(await _store.Accounts.GetOrCreateAccountAsync("c", default)).Steps);

        _executor.Gate.SetResult();
        await aBuild;
        await bBuild;
        Assert.Empty(_scheduler.QueueFor(a).Steps);
    }

    [Fact]
    public async Task Sessions_sharing_a_build_each_wait_under_their_own_limits_and_the_build_under_Kilns()
    {
        // 19.10: a builds with a 1 s timeout, b joins with none. The build runs under Kiln's limits (none here); a
        // gives up after its second with Nix's message, b gets the build, whose record is a success.
        var drv = await DerivationAsync("a", "shared-limits");
        await DerivationAsync("b", "shared-limits");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        var impatient = BuildWithAsync("a", new ClientBuildSettings { Timeout = TimeSpan.FromSeconds(1) }, drv);
        await WaitUntil(() => _executor.Jobs.Count == 1);
        var patient = BuildWithAsync("b", new ClientBuildSettings(), drv);
        var (impatientResults, _) = await impatient.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(BuildStatus.TimedOut, impatientResults.Single().Status);
        Assert.Contains($"building of '{drv}!out' from .drv file timed out after 1 seconds", impatientResults.Single().ErrorMessage, StringComparison.Ordinal);
        Assert.False(patient.IsCompleted);

        _executor.Gate.SetResult();
        var (patientResults, _) = await patient;
        Assert.Equal(BuildStatus.Built, patientResults.Single().Status);
        Assert.Single(_executor.Jobs);
        Assert.Equal(TimeSpan.Zero, _executor.Jobs.Single().Limits.Timeout);
        Assert.True((await _store.Builds.ListBuildsAsync(null, 10, default)).Single().Succeeded);
    }

    [Fact]
    public async Task A_session_alone_passing_its_own_limit_stops_the_build_and_the_record_says_which_limit()
    {
        var drv = await DerivationAsync("a", "silent");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        var (results, events) = await BuildWithAsync("a", new ClientBuildSettings { MaxSilentTime = TimeSpan.FromSeconds(1) }, drv).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(BuildStatus.TimedOut, results.Single().Status);
        Assert.Contains("timed out after 1 seconds of silence", results.Single().ErrorMessage, StringComparison.Ordinal);
        Assert.Equal(["building silent.drv"], events.Lines);
        await WaitUntil(() => _store.Builds.ListBuildsAsync(null, 10, default).Result.Single() is { Running: false });
        var record = (await _store.Builds.ListBuildsAsync(null, 10, default)).Single();
        Assert.Equal("TimedOut", record.Failure);
        Assert.Contains("of silence", record.Error, StringComparison.Ordinal);
    }

    // Sizing from history: a package's first build gets the defaults; the next build of the same package (another
    // version) gets twice the memory and twice the parallelism the first reported, within the operator's bounds.
    [Fact]
    public async Task Memory_and_cores_come_from_the_history_of_the_same_package_within_the_bounds()
    {
        var scheduler = new BuildScheduler(_store.Builds, _store.Blobs, _queue, _store.Logs, new SchedulerOptions
        {
            BuildMemory = 8L << 30,
            MinMemory = 256L << 20,
            DefaultMemory = 1L << 30,
            Cores = 16,
            MinCores = 2,
            DefaultCores = 3,
        }, null, NullLogger.Instance);
        using var view = await _store.OpenViewAsync("a", default);
        async Task<Kiln.Agent.BuildLimits> LimitsOfAsync(string name)
        {
            var drv = await DerivationAsync("a", name);
            var results = await scheduler.ForSession(view).BuildPathsAsync([new DerivedPath.Built(drv, null)], new ClientBuildSettings(), new Events(), default);
            Assert.Equal(BuildStatus.Built, results.Single().Status);
            return _executor.Jobs.Single(j => j.DrvPath == drv).Limits;
        }

        // 3 cores' worth of CPU for 10 s at a 700 MiB peak.
        _executor.Usage["sized-1.0"] = (700L << 20, TimeSpan.FromSeconds(30), TimeSpan.FromSeconds(10));
        var first = await LimitsOfAsync("sized-1.0");
        Assert.Equal((1L << 30, 3), (first.MemoryBytes, first.Cores));
        var second = await LimitsOfAsync("sized-2.0");
        Assert.Equal((1400L << 20, 6), (second.MemoryBytes, second.Cores));

        // Little used: the minimums hold. Much used: the maximums do.
        _executor.Usage["tiny-1"] = (1L << 20, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(100));
        await LimitsOfAsync("tiny-1");
        var tiny = await LimitsOfAsync("tiny-2");
        Assert.Equal((256L << 20, 2), (tiny.MemoryBytes, tiny.Cores));
        _executor.Usage["huge-1"] = (7L << 30, TimeSpan.FromSeconds(1000), TimeSpan.FromSeconds(10));
        await LimitsOfAsync("huge-1");
        var huge = await LimitsOfAsync("huge-2");
        Assert.Equal((8L << 30, 16), (huge.MemoryBytes, huge.Cores));
    }

    // Fencing: a front door whose claim on a running build was taken by another (it lapsed while this one was cut off)
    // stops that build at its next renewal, and its session is told why, rather than build it a second time.
    [Fact]
    public async Task A_build_whose_claim_another_front_door_took_is_stopped_at_the_next_renewal()
    {
        var scheduler = new BuildScheduler(_store.Builds, _store.Blobs, _queue, _store.Logs,
            new SchedulerOptions { FrontDoor = "door-a", ClaimLease = TimeSpan.FromSeconds(1.5) }, null, NullLogger.Instance);
        using var stopping = new CancellationTokenSource();
        var keeping = scheduler.KeepClaimsAsync(stopping.Token);
        var drv = await DerivationAsync("a", "taken");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var view = await _store.OpenViewAsync("a", default);
        var build = scheduler.ForSession(view).BuildPathsAsync([new DerivedPath.Built(drv, null)], new ClientBuildSettings(), new Events(), default);
        await WaitUntil(() => _executor.Jobs.Count == 1);

        // Another front door takes the claim (as if door-a's had lapsed).
        var step = (await _store.Builds.ListBuildsAsync(null, 10, default)).Single().StepKey;
        await _store.Builds.ReleaseStepClaimsAsync("door-a", step, default);
        var now = await _store.Builds.ClockAsync(default);
        Assert.True(await _store.Builds.ClaimStepAsync(step, "door-b", now + 60, now, default));

        var result = (await build.WaitAsync(TimeSpan.FromSeconds(30))).Single();
        Assert.NotEqual(BuildStatus.Built, result.Status);
        Assert.Contains("lost its claim", result.ErrorMessage, StringComparison.Ordinal);
        Assert.False(await _store.Builds.ClaimStepAsync(step, "door-c", now + 60, now, default)); // door-b's claim stands
        await stopping.CancelAsync();
        await keeping;
    }

    // A session (with tags, which wait for the build's record) whose step waits for another front door's build has no
    // record to wait for until that build ends: cancelled meanwhile, it ends at once (though another account's session
    // keeps the step waiting), and no record is made for it here.
    [Fact]
    public async Task A_session_cancelled_while_another_front_door_builds_its_step_ends_at_once()
    {
        var doorB = new BuildScheduler(_store.Builds, _store.Blobs, _queue, _store.Logs, new SchedulerOptions { FrontDoor = "door-b" }, null, NullLogger.Instance);
        var drv = await DerivationAsync("a", "elsewhere");
        await DerivationAsync("b", "elsewhere");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var viewB = await _store.OpenViewAsync("a", default);
        var throughB = doorB.ForSession(viewB).BuildPathsAsync([new DerivedPath.Built(drv, null)], new ClientBuildSettings(), new Events(), default);
        await WaitUntil(() => _executor.Jobs.Count == 1);

        using var viewA = await _store.OpenViewAsync("a", default);
        var events = new Events();
        var throughA = _scheduler.ForSession(viewA, [new BuildTag("ci", "1")]).BuildPathsAsync([new DerivedPath.Built(drv, null)], new ClientBuildSettings(), events, default);
        await WaitUntil(() => events.Lines.Any(l => l.Contains("another Kiln front door is building", StringComparison.Ordinal)));
        using var viewOfB = await _store.OpenViewAsync("b", default);
        var bEvents = new Events();
        var bWaits = _scheduler.ForSession(viewOfB).BuildPathsAsync([new DerivedPath.Built(drv, null)], new ClientBuildSettings(), bEvents, default);
        await WaitUntil(() => bEvents.Lines.Count > 0); // joined
        var a = await _store.Accounts.GetOrCreateAccountAsync("a", default);
        Assert.Equal(1, _scheduler.CancelDerivation(drv, a));
        var result = (await throughA.WaitAsync(TimeSpan.FromSeconds(5))).Single();
        Assert.Equal(BuildStatus.MiscFailure, result.Status);
        Assert.Contains("cancelled through Kiln's API", result.ErrorMessage, StringComparison.Ordinal);
        Assert.False(bWaits.IsCompleted);

        _executor.Gate.SetResult();
        Assert.Equal(BuildStatus.Built, (await throughB.WaitAsync(TimeSpan.FromSeconds(30))).Single().Status);
        Assert.True((await bWaits.WaitAsync(TimeSpan.FromSeconds(30))).Single().Status is BuildStatus.Built or BuildStatus.AlreadyValid);
        Assert.Single(await _store.Builds.ListBuildsAsync(null, 10, default));
    }

    // Several front doors: a listing through one shows an account's builds another holds (as that one published them on
    // the board), and a cancel through one, by build id or by derivation, ends the account's requests on the front door
    // holding them; another account sees and stops nothing. A front door withdraws its publication when it stops.
    [Fact]
    public async Task Requests_another_front_door_holds_are_listed_and_cancelled_through_this_one()
    {
        BuildScheduler Door(string name) => new(_store.Builds, _store.Blobs, _queue, _store.Logs,
            new SchedulerOptions { FrontDoor = name, QueueShareInterval = TimeSpan.FromMilliseconds(100), QueueShareLife = TimeSpan.FromSeconds(3) }, null, NullLogger.Instance)
        { Board = _store.Board };
        var (doorA, doorB) = (Door("door-a"), Door("door-b"));
        using var stopping = new CancellationTokenSource();
        var sharing = Task.WhenAll(doorA.ShareQueueAsync(stopping.Token), doorB.ShareQueueAsync(stopping.Token));
        var byId = await DerivationAsync("a", "held-1");
        var byDrv = await DerivationAsync("a", "held-2");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var view = await _store.OpenViewAsync("a", default);
        var first = doorA.ForSession(view).BuildPathsAsync([new DerivedPath.Built(byId, null)], new ClientBuildSettings(), new Events(), default);
        var second = doorA.ForSession(view).BuildPathsAsync([new DerivedPath.Built(byDrv, null)], new ClientBuildSettings(), new Events(), default);
        var a = await _store.Accounts.GetOrCreateAccountAsync("a", default);
        var b = await _store.Accounts.GetOrCreateAccountAsync("b", default);
        await WaitUntil(() => doorB.ElsewhereAsync(a, default).Result!.Entries.Count(e => e.Entry.BuildId is not null) == 2);

        var listed = (await doorB.ElsewhereAsync(a, default))!.Entries.OrderBy(e => e.Entry.DrvPath == byDrv.ToString()).ToList();
        Assert.All(listed, e => Assert.Equal("door-a", e.Owner));
        Assert.Equal([byId.ToString(), byDrv.ToString()], listed.Select(e => e.Entry.DrvPath));
        Assert.Empty((await doorB.ElsewhereAsync(b, default))!.Entries);
        Assert.Empty((await doorA.ElsewhereAsync(a, default))!.Entries); // its own are its scheduler's to list
        var id = listed[0].Entry.BuildId!.Value;
        Assert.Equal(0, await doorB.CancelElsewhereAsync(b, id, null, default)); // not b's
        Assert.Equal(0, await doorB.CancelElsewhereAsync(b, null, byDrv, default));
        // Asked of door-a for b all the same (as a front door that did not filter would): door-a's own account check holds.
        var now = await _store.Builds.ClockAsync(default);
        await _store.Board.AskCancelAsync("door-a", b, id, null, now, default);
        await _store.Board.AskCancelAsync("door-a", b, null, byDrv.ToString(), now, default);
        await WaitUntil(() => doorA.CancelsTaken == 2);
        await Task.Delay(200);
        Assert.False(first.IsCompleted || second.IsCompleted);

        // A publication forgotten (door-a cut off for an hour, say) comes back whole with its next renewal.
        await _store.Board.ForgetLapsedAsync(now + 100, default);
        Assert.Empty((await doorB.ElsewhereAsync(a, default))!.Entries);
        await WaitUntil(() => doorB.ElsewhereAsync(a, default).Result!.Entries.Count == 2);

        Assert.Equal(1, await doorB.CancelElsewhereAsync(a, id, null, default));
        var cancelled = (await first.WaitAsync(TimeSpan.FromSeconds(10))).Single();
        Assert.Equal(BuildStatus.MiscFailure, cancelled.Status);
        Assert.Contains("cancelled through Kiln's API", cancelled.ErrorMessage, StringComparison.Ordinal);
        Assert.False(second.IsCompleted);
        Assert.Equal(1, await doorB.CancelElsewhereAsync(a, null, byDrv, default));
        Assert.Equal(BuildStatus.MiscFailure, (await second.WaitAsync(TimeSpan.FromSeconds(10))).Single().Status);
        await WaitUntil(() => doorB.ElsewhereAsync(a, default).Result!.Entries.Count == 0);

        var third = doorA.ForSession(view).BuildPathsAsync([new DerivedPath.Built(await DerivationAsync("a", "held-3"), null)], new ClientBuildSettings(), new Events(), default);
        await WaitUntil(() => doorB.ElsewhereAsync(a, default).Result!.Entries.Count > 0);
        await stopping.CancelAsync();
        await sharing;
        Assert.Empty((await _store.Board.ReadBoardAsync(a, "door-c", await _store.Builds.ClockAsync(default), default)).Entries); // withdrawn
        _executor.Gate.SetResult();
        Assert.Equal(BuildStatus.Built, (await third.WaitAsync(TimeSpan.FromSeconds(30))).Single().Status);
    }

    // A build its account's session left running (keep-builds-running) has no session to stop: the account's cancel
    // stops the build itself.
    [Fact]
    public async Task Cancelling_a_build_left_running_for_its_account_stops_it()
    {
        var drv = await DerivationAsync("a", "kept");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var left = new CancellationTokenSource();
        using var view = await _store.OpenViewAsync("a", default);
        var build = _scheduler.ForSession(view, null, new SessionLimits(TimeSpan.Zero, TimeSpan.Zero, 0) { KeepBuildsRunning = true })
            .BuildPathsAsync([new DerivedPath.Built(drv, null)], new ClientBuildSettings(), new Events(), left.Token);
        await WaitUntil(() => _executor.Jobs.Count == 1);
        await left.CancelAsync(); // the client went away
        await Task.WhenAny(build, Task.Delay(TimeSpan.FromSeconds(30)));
        Assert.True(build.IsCompleted, "the session did not end with its client");
        await Task.Delay(200);
        Assert.Single(_executor.Jobs); // still running for nobody

        var a = await _store.Accounts.GetOrCreateAccountAsync("a", default);
        var b = await _store.Accounts.GetOrCreateAccountAsync("b", default);
        Assert.Equal(0, _scheduler.CancelDerivation(drv, b)); // not b's
        Assert.Equal(1, _scheduler.CancelDerivation(drv, a));
        Assert.Equal(0, _scheduler.CancelDerivation(drv, a)); // once
        await WaitUntil(() => _store.Builds.ListBuildsAsync(null, 10, default).Result is [{ Running: false }]);
        var record = (await _store.Builds.ListBuildsAsync(null, 10, default)).Single();
        Assert.Contains("cancelled through Kiln's API", record.Error, StringComparison.Ordinal);
    }

    // A request for a step that is being stopped (its account cancelled it, and the build takes a moment to die) does
    // not join it, which would end it with another's cancel: it waits for that step to end and builds anew.
    [Fact]
    public async Task A_request_for_a_step_being_cancelled_builds_it_anew_instead_of_joining()
    {
        var drv = await DerivationAsync("a", "restarted");
        await DerivationAsync("b", "restarted");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _executor.StopDelay = TimeSpan.FromSeconds(3);
        var first = BuildAsync("a", keepGoing: false, drv);
        await WaitUntil(() => _executor.Jobs.Count == 1);
        var a = await _store.Accounts.GetOrCreateAccountAsync("a", default);
        Assert.Equal(1, _scheduler.CancelDerivation(drv, a)); // the build now takes three seconds to stop
        // a's request has ended, so its step is being stopped (b asking earlier would simply have kept it running).
        Assert.Equal(BuildStatus.MiscFailure, (await first.WaitAsync(TimeSpan.FromSeconds(30))).Results.Single().Status);
        var second = BuildAsync("b", keepGoing: false, drv);
        await WaitUntil(() => _executor.Jobs.Count == 2); // built again, for b
        _executor.Gate.SetResult();
        var (results, _) = await second.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(results.Single().Status == BuildStatus.Built, results.Single().ErrorMessage);
    }

    [Fact]
    public async Task A_session_log_limit_counts_the_lines_it_was_sent()
    {
        // The build logs one line ("building chatty.drv", 20 bytes with its newline) and then waits: past 5 bytes.
        var drv = await DerivationAsync("a", "chatty");
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        var (results, _) = await BuildWithAsync("a", new ClientBuildSettings { MaxLogSize = 5 }, drv).WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(BuildStatus.LogLimitExceeded, results.Single().Status);
        Assert.Contains("killed after writing more than 5 bytes of log output", results.Single().ErrorMessage, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Time_waiting_for_an_agent_does_not_count_against_a_timeout()
    {
        // Both slots are busy for 1.5 s; the third build waits in the queue longer than its 1 s timeout, then runs.
        _executor.Durations["busy-0"] = 1500;
        _executor.Durations["busy-1"] = 1500;
        var busy = new[] { await DerivationAsync("a", "busy-0"), await DerivationAsync("a", "busy-1") };
        var queued = await DerivationAsync("a", "queued");

        var running = BuildAsync("a", keepGoing: true, busy);
        await WaitUntil(() => _executor.Jobs.Count == 2);
        var (results, _) = await BuildWithAsync("a", new ClientBuildSettings { Timeout = TimeSpan.FromSeconds(1) }, queued);
        await running;

        Assert.Equal(BuildStatus.Built, results.Single().Status);
    }

    [Fact]
    public async Task A_build_done_for_one_account_is_reused_for_another()
    {
        var drv = await DerivationAsync("a", "reused");
        await BuildAsync("a", keepGoing: false, drv);
        await DerivationAsync("b", "reused");
        Assert.False(await ValidAsync("b", Out(drv)));

        var (results, events) = await BuildAsync("b", keepGoing: false, drv);

        Assert.Equal(BuildStatus.Built, results.Single().Status);
        Assert.Single(_executor.Jobs);
        Assert.True(await ValidAsync("b", Out(drv)));
        Assert.Matches($"^kiln: reusing a build of '{drv}' from [0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}} [0-9]{{2}}:[0-9]{{2}} UTC$", Assert.Single(events.Messages));
    }

    [Fact]
    public async Task A_collection_while_a_build_runs_spares_its_inputs()
    {
        var dependency = await DerivationAsync("a", "input");
        await BuildAsync("a", keepGoing: false, dependency);
        var top = await DerivationAsync("a", "consumer", dependency);
        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        var building = BuildAsync("a", keepGoing: false, top);
        await WaitUntil(() => _executor.Jobs.Count == 2);
        using (var view = await _store.OpenViewAsync("a", default))
        {
            // Nothing roots the input but the session building with it.
            var collected = await view.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default);
            Assert.DoesNotContain(Out(dependency), collected.Paths);
        }

        Assert.True(await ValidAsync("a", Out(dependency)));
        _executor.Gate.SetResult();
        var (results, _) = await building;
        Assert.Equal(BuildStatus.Built, results.Single().Status);
    }

    [Fact]
    public async Task A_build_waiting_for_a_slot_says_so_in_its_log_with_how_busy_the_agents_are()
    {
        var drvs = new List<StorePath>();
        for (var i = 0; i < 3; i++)
        {
            drvs.Add(await DerivationAsync("a", $"slot-{i}"));
        }

        _executor.Gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var building = BuildAsync("a", keepGoing: false, [.. drvs]);
        await WaitUntil(() => _executor.Jobs.Count == 2); // both slots taken; the third waits
        await Task.Delay(1500); // past the queue's notice
        _executor.Gate.SetResult();
        var (results, events) = await building;

        Assert.All(results, r => Assert.Equal(BuildStatus.Built, r.Status));
        var waiting = Assert.Single(events.Lines, l => l.StartsWith("kiln: waiting for a build slot", StringComparison.Ordinal));
        Assert.Matches("^kiln: waiting for a build slot for '/nix/store/[a-z0-9]{32}-slot-[0-2].drv': 2 of 2 busy, 1 builds waiting$", waiting);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_failed_dependency_fails_its_dependents_and_keep_going_builds_the_rest(bool keepGoing)
    {
        var broken = await DerivationAsync("a", "broken");
        var dependent = await DerivationAsync("a", "dependent", broken);
        var slow = await DerivationAsync("a", "slow-base");
        var independent = await DerivationAsync("a", "independent", slow);
        _executor.Failing.Add("broken");
        _executor.Durations["slow-base"] = 500; // still running when "broken" fails

        var (results, _) = await BuildAsync("a", keepGoing, dependent, independent);

        Assert.Equal(BuildStatus.DependencyFailed, results[0].Status);
        Assert.Contains("1 dependencies of derivation", results[0].ErrorMessage, StringComparison.Ordinal);
        Assert.DoesNotContain(_executor.Jobs, j => j.Derivation.Name == "dependent");
        if (keepGoing)
        {
            Assert.Equal(BuildStatus.Built, results[1].Status);
            Assert.True(await ValidAsync("a", Out(independent)));
        }
        else
        {
            // Stopped at the first failure, as Nix without --keep-going: what runs is cancelled, the rest never starts.
            Assert.NotEqual(BuildStatus.Built, results[1].Status);
            Assert.DoesNotContain(_executor.Jobs, j => j.Derivation.Name == "independent");
            Assert.False(await ValidAsync("a", Out(independent)));
        }
    }

    [Fact]
    public async Task Slots_bound_how_many_builds_run_at_once()
    {
        var drvs = new List<StorePath>();
        for (var i = 0; i < 6; i++)
        {
            drvs.Add(await DerivationAsync("a", $"parallel-{i}"));
        }

        var (results, _) = await BuildAsync("a", keepGoing: false, [.. drvs]);

        Assert.All(results, r => Assert.Equal(BuildStatus.Built, r.Status));
        Assert.Equal(6, _executor.Jobs.Count);
        Assert.Equal(2, _executor.MaxConcurrent);
    }

    [Fact]
    public async Task A_derivation_whose_output_path_is_wrong_is_rejected_before_building()
    {
        var derivation = new Derivation { Name = "liar", Platform = "x86_64-linux", Builder = "/bin/sh" };
        var claimed = StorePath.Parse("/nix/store/00000000000000000000000000000000-liar");
        derivation.Outputs["out"] = DerivationOutput.InputAddressed(claimed);
        derivation.Environment["out"] = claimed.FullPath;
        using var view = await _store.OpenViewAsync("a", default);
        var drv = (await view.AddContentAddressedAsync("liar.drv", ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
            new MemoryStream(ATerm.PrintBytes(derivation)), new SortedSet<StorePath>(), false, default)).Path;

        var (results, _) = await BuildAsync("a", keepGoing: false, drv);

        Assert.Equal(BuildStatus.InputRejected, results.Single().Status);
        Assert.Contains("has incorrect output", results.Single().ErrorMessage, StringComparison.Ordinal);
        Assert.Empty(_executor.Jobs);
    }

    [Fact]
    public async Task A_failed_build_whose_record_cannot_be_written_still_tells_its_client_why_it_failed()
    {
        // 20.1/20.3: a build that filled the disk fails; writing its record then fails too (the database is on that
        // disk). The client must still hear the build's own reason, not "storage is full" in its place.
        var scheduler = new BuildScheduler(UnfinishableBuilds.Over(_store.Builds), _store.Blobs, _queue, _store.Logs, new SchedulerOptions(), null, NullLogger.Instance);
        var drv = await DerivationAsync("a", "broken");
        _executor.Failing.Add("broken");
        using var view = await _store.OpenViewAsync("a", default);

        var results = await scheduler.ForSession(view).BuildPathsAsync([new DerivedPath.Built(drv, null)], new ClientBuildSettings(), new Events(), default);

        Assert.Equal(BuildStatus.PermanentFailure, results.Single().Status);
        Assert.Contains($"builder for '{drv}' failed with exit code 1", results.Single().ErrorMessage, StringComparison.Ordinal);
    }

    private static async Task WaitUntil(Func<bool> condition)
    {
        for (var i = 0; i < 500 && !condition(); i++)
        {
            await Task.Delay(10);
        }

        Assert.True(condition());
    }
}

// Build records that cannot be finished, as on a full disk: FinishBuildAsync fails with ENOSPC, everything else is the
// real store's.
#pragma warning disable CA1852 // DispatchProxy derives from it at run time
internal class UnfinishableBuilds : System.Reflection.DispatchProxy
{
    private IBuildMetadata _inner = null!;

    public static IBuildMetadata Over(IBuildMetadata inner)
    {
        var proxy = Create<IBuildMetadata, UnfinishableBuilds>();
        ((UnfinishableBuilds)(object)proxy)._inner = inner;
        return proxy;
    }

    protected override object? Invoke(System.Reflection.MethodInfo? targetMethod, object?[]? args) =>
        targetMethod!.Name == nameof(IBuildMetadata.FinishBuildAsync)
            ? Task.FromException(new IOException("No space left on device", 28))
            : targetMethod.Invoke(_inner, args);
}
#pragma warning restore CA1852
