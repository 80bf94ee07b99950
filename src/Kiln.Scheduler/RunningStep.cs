using System.Diagnostics;
using Kiln.Agent;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Worker;
using Kiln.Store.Logs;

namespace Kiln.Scheduler;

/// <summary>
/// A build in flight, shared by every session that wants it: the first starts it, later ones join and get the log
/// so far, then the live log. It is cancelled only when no session waits for it any more. It is the job's log sink:
/// lines go to the build's own log and to every session watching. The build runs under the operator's limits; a
/// session whose client asked for tighter ones (timeout, max-silent-time, max-build-log-size) stops waiting when they
/// are passed and gets Nix's failure for them, while the build goes on for the others.
/// </summary>
internal sealed class RunningStep : IBuildLog, IDisposable
{
    private static readonly TimeSpan LimitCheck = TimeSpan.FromMilliseconds(250);

    private readonly Lock _gate = new();
    private readonly List<Watcher> _watchers = [];
    private readonly Queue<string> _backlog = new();
    // Lines for one account's sessions only (NoteFor) while the build waits: a session of that account that joins
    // afterwards gets them too. The step is often noted before the session that started it has joined (the claim runs
    // at once), and its client would not learn why its build waits.
    private readonly List<(long Account, string Line)> _notes = [];
    private readonly int _backlogLimit;
    private readonly CancellationTokenSource _cancel = new();
    private readonly TaskCompletionSource<long?> _buildId = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private IBuildLogWriter? _log;
    private int _waiters;
    private long _runningSince; // Stopwatch timestamp of the agent starting it; 0 while it waits in the queue
    private BuildOutcome? _gaveUp;
    private readonly long _created = Stopwatch.GetTimestamp();
    private bool _joined; // a session has waited for it already: the next one joins a build someone else started
    private bool _keepRunning; // a session that asked for it (keep-builds-running) waited for it: a disconnect does not stop it

    public RunningStep(string key, BuildJob job, long startedFor, int backlogLimit)
    {
        Key = key;
        Job = job;
        StartedFor = startedFor;
        _backlogLimit = backlogLimit;
    }

    public string Key { get; }

    public BuildJob Job { get; }

    public StorePath DrvPath => Job.DrvPath;

    /// <summary>The account whose request started the build.</summary>
    public long StartedFor { get; }

    /// <summary>The build's record, once it is written (null if it could not be).</summary>
    public Task<long?> BuildId => _buildId.Task;

    /// <summary>The build's record id if it has one already; null while it is not written (or could not be).</summary>
    public long? RecordedId => _buildId.Task is { IsCompletedSuccessfully: true, Result: { } id } ? id : null;

    /// <summary>Fires when no session waits for the build any more.</summary>
    public CancellationToken Cancellation => _cancel.Token;

    /// <summary>The build's end; set by whoever started it.</summary>
    public Task<StepOutcome> Completion { get; set; } = null!;

    /// <summary>
    /// Why the last session left, when it left because of a limit of its own: the build was cancelled for that, and
    /// its record says so rather than "cancelled".
    /// </summary>
    public BuildOutcome? GaveUp
    {
        get
        {
            lock (_gate)
            {
                return _gaveUp;
            }
        }
    }

    /// <summary>The build has its record and its log.</summary>
    public void Started(long? id, IBuildLogWriter? log)
    {
        lock (_gate)
        {
            _log ??= log;
        }

        _buildId.TrySetResult(id);
    }

    /// <summary>
    /// Counts one more session about to wait for the build (<see cref="JoinAsync"/> follows at once). The scheduler takes
    /// it under its own lock as it finds or makes the step, so that a cancel in between sees a session waiting. False
    /// when the build is being stopped (nobody wanted it any more, or it was cancelled): that end is not this session's;
    /// it waits for the step to end and asks again.
    /// </summary>
    public bool TryReserve()
    {
        lock (_gate)
        {
            if (_stopping || _cancel.IsCancellationRequested)
            {
                return false;
            }

            _waiters++;
            _leftRunning = false;
            return true;
        }
    }

    /// <summary>
    /// Waits for the build as one more interested session (after <see cref="TryReserve"/>); <paramref name="limits"/> are
    /// the session's own (zero: none), counted from when it joined or the build began running, whichever is later.
    /// </summary>
    public async Task<StepOutcome> JoinAsync(IBuildEvents events, BuildLimits limits, long account, CancellationToken cancellationToken, bool keepRunning = false)
    {
        Watcher watcher;
        lock (_gate)
        {
            _keepRunning |= keepRunning && account == StartedFor; // (its CPU is the starting account's: only its setting keeps it)
            watcher = new Watcher(events, events.BuildStarted(DrvPath), limits, account, Stopwatch.GetTimestamp());
            if (_joined)
            {
                // Only this session's log says so (not the build's own): the others started or joined it themselves.
                var seconds = (int)Stopwatch.GetElapsedTime(_created).TotalSeconds;
                events.LogLine(watcher.Activity, $"kiln: joining a build of '{DrvPath}' started {seconds} s ago" +
                    (_runningSince == 0 ? " (it is waiting for a build slot)" : ""));
            }

            _joined = true;
            foreach (var line in _backlog)
            {
                watcher.Line(line);
            }

            foreach (var (noted, line) in _notes)
            {
                if (noted == account)
                {
                    watcher.Line(line);
                }
            }

            _watchers.Add(watcher);
        }

        BuildOutcome? exceeded = null;
        try
        {
            if (limits.Timeout == TimeSpan.Zero && limits.MaxSilentTime == TimeSpan.Zero && limits.MaxLogSize == 0)
            {
                if (await Task.WhenAny(Completion, watcher.Stopped).WaitAsync(cancellationToken).ConfigureAwait(false) == Completion)
                {
                    return await Completion.ConfigureAwait(false);
                }

                exceeded = await watcher.Stopped.ConfigureAwait(false);
                return new StepOutcome(exceeded, RecordedId ?? 0, Reused: false);
            }

            while (true)
            {
                // The log limit is seen as the line arrives (a loud build may end at once); the clocks every LimitCheck.
                await Task.WhenAny(watcher.LogLimitPassed, watcher.Stopped, Completion, Task.Delay(LimitCheck, cancellationToken)).ConfigureAwait(false);
                lock (_gate)
                {
                    exceeded = watcher.Exceeded(Job, _runningSince);
                }

                if (exceeded is not null)
                {
                    // The record's id if it has one, not awaited: a step waiting for its account's slot or another front
                    // door's build gets none until it starts, and it is this session leaving (below) that cancels it.
                    return new StepOutcome(exceeded, RecordedId ?? 0, Reused: false);
                }

                if (Completion.IsCompleted)
                {
                    return await Completion.ConfigureAwait(false);
                }

                cancellationToken.ThrowIfCancellationRequested();
            }
        }
        finally
        {
            lock (_gate)
            {
                _watchers.Remove(watcher);
                events.BuildStopped(watcher.Activity);
                // The last session gone: the build stops, unless one asked for it to go on (keep-builds-running) and
                // this one only went away (a limit of its own passed, or a cancel through the API, stop it as before).
                if (--_waiters == 0 && !Completion.IsCompleted && (exceeded is not null || !_keepRunning))
                {
                    _gaveUp = exceeded;
                    try
                    {
                        _cancel.Cancel(); // nobody wants it any more
                    }
                    catch (ObjectDisposedException)
                    {
                        // it has just finished
                    }
                }
                else if (_waiters == 0 && !Completion.IsCompleted)
                {
                    _leftRunning = true; // for nobody, by the starting account's keep-builds-running: its cancel may stop it
                }
            }
        }
    }

    /// <summary>
    /// Stops the build for a reason of Kiln's (this front door lost its claim on the step): the build is cancelled and its
    /// sessions are told <paramref name="why"/>.
    /// </summary>
    public bool Abandon(BuildOutcome why)
    {
        lock (_gate)
        {
            if (Completion is { IsCompleted: true } || _done || _stopping || _cancel.IsCancellationRequested)
            {
                return false;
            }

            _stopping = true; // from here no session joins it (TryReserve)
            _gaveUp = why;
        }

        return CancelBuild();
    }

    // Outside the lock: cancelling runs the build's callbacks (the queue's, the agent's) on this thread.
    private bool CancelBuild()
    {
        try
        {
            _cancel.Cancel();
            return true;
        }
        catch (ObjectDisposedException)
        {
            return false; // it has just finished
        }
    }

    /// <summary>
    /// Ends the waits of <paramref name="account"/>'s sessions with <paramref name="why"/> (its user cancelled the build);
    /// the build stops when no other session waits for it. Returns how many waits there were. A build its account's
    /// session left running (keep-builds-running) that nobody waits for any more is stopped too, and counts as one.
    /// </summary>
    public int StopWaitsOf(long account, BuildOutcome why)
    {
        lock (_gate)
        {
            var stopped = 0;
            foreach (var watcher in _watchers.Where(w => w.Account == account))
            {
                stopped += watcher.Stop(why) ? 1 : 0;
            }

            // Only a build left running for nobody (not one stopping or ended, whose own reason stands): a session
            // reserved under the scheduler's lock clears the mark, so one about to join is never cut off.
            if (stopped > 0 || !_leftRunning || _done || _stopping || StartedFor != account || _cancel.IsCancellationRequested)
            {
                return stopped;
            }

            _leftRunning = false;
            _stopping = true; // from here no session joins it (TryReserve)
            _gaveUp = why;
        }

        return CancelBuild() ? 1 : 0;
    }

    private bool _leftRunning; // the last session left; keep-builds-running keeps the build going for nobody
    private bool _stopping; // cancelled for a reason of its own (Abandon, an account's cancel): not to be joined
    private bool _done;

    /// <summary>Whether the build is for <paramref name="account"/>: its request started it, or one of its sessions waits for it.</summary>
    public bool IsFor(long account)
    {
        lock (_gate)
        {
            return StartedFor == account || _watchers.Any(w => w.Account == account);
        }
    }

    /// <summary>The accounts it is for (<see cref="IsFor"/>): the one whose request started it and those of the sessions waiting for it.</summary>
    public IReadOnlyList<long> Accounts
    {
        get
        {
            lock (_gate)
            {
                return [.. _watchers.Select(w => w.Account).Append(StartedFor).Distinct()];
            }
        }
    }

    public void Running()
    {
        lock (_gate)
        {
            _runningSince = Stopwatch.GetTimestamp();
            _notes.Clear(); // it waits no more
        }
    }

    public void Line(string line)
    {
        lock (_gate)
        {
            _log?.AppendLine(line);
            _backlog.Enqueue(line);
            if (_backlog.Count > _backlogLimit)
            {
                _backlog.Dequeue();
            }

            foreach (var watcher in _watchers)
            {
                watcher.Line(line);
            }
        }
    }

    public void NoteFor(long account, string line)
    {
        lock (_gate)
        {
            // Kept while the build waits (a note can come after it began running: the queue notes outside its lock).
            if (_runningSince == 0 && _notes.Count < 8) // a step is noted once or twice; never a log
            {
                _notes.Add((account, line));
            }

            foreach (var watcher in _watchers.Where(w => w.Account == account))
            {
                watcher.Line(line);
            }
        }
    }

    /// <summary>Whether a session of an account other than the one that started it waits for it.</summary>
    public bool SharedWithOtherAccounts
    {
        get
        {
            lock (_gate)
            {
                return _watchers.Any(w => w.Account != StartedFor);
            }
        }
    }

    /// <summary>
    /// Whether the build waits for one of its account's max-jobs slots, all busy on Kiln's front doors (on PostgreSQL,
    /// where the limit counts every front door's builds). It has no record then: the listing shows it by its derivation.
    /// </summary>
    public bool WaitsForAccountSlot
    {
        get => Volatile.Read(ref _waitsForAccountSlot);
        set
        {
            Volatile.Write(ref _waitsForAccountSlot, value);
            if (!value)
            {
                lock (_gate)
                {
                    _notes.Clear(); // claimed, or another front door builds it: what was noted no longer holds
                }
            }
        }
    }

    private bool _waitsForAccountSlot;

    /// <summary>The queue's ticket of its current offer (null until offered).</summary>
    public Queue.JobTicket? Ticket { get; set; }

    /// <summary>The build has ended: closes the log.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _done = true;
            _log?.Dispose();
            _cancel.Dispose();
        }

        _buildId.TrySetResult(null);
    }

    // One waiting session: where its log lines go, and how much log and silence it has seen against its own limits.
    private sealed class Watcher(IBuildEvents events, long activity, BuildLimits limits, long account, long joined)
    {
        private readonly TaskCompletionSource _logLimitPassed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource<BuildOutcome> _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);

        /// <summary>The account whose session this is.</summary>
        public long Account => account;

        /// <summary>Completes when the session's wait was ended for it (<see cref="Stop"/>), with the failure it reports.</summary>
        public Task<BuildOutcome> Stopped => _stopped.Task;

        /// <summary>False when it was stopped before (a cancel clicked twice counts once).</summary>
        public bool Stop(BuildOutcome why) => _stopped.TrySetResult(why);
        private long _logBytes;
        private long _lastLine;

        public long Activity => activity;

        public Task LogLimitPassed => _logLimitPassed.Task;

        public void Line(string line)
        {
            _logBytes += System.Text.Encoding.UTF8.GetByteCount(line) + 1;
            _lastLine = Stopwatch.GetTimestamp();
            if (limits.MaxLogSize > 0 && _logBytes > limits.MaxLogSize)
            {
                _logLimitPassed.TrySetResult();
            }

            events.LogLine(activity, line);
        }

        // The session's first limit passed, as the failure it reports; null while all hold. Time counts only once
        // the build runs (a build waiting for an agent is neither slow nor silent).
        public BuildOutcome? Exceeded(BuildJob job, long runningSince)
        {
            if (_stopped.Task.IsCompleted)
            {
                return _stopped.Task.Result;
            }

            if (limits.MaxLogSize > 0 && _logBytes > limits.MaxLogSize)
            {
                return BuildOutcome.Failed(BuildFailureKind.LogLimitExceeded, LimitMessages.LogTooLong(job, limits.MaxLogSize));
            }

            if (runningSince == 0)
            {
                return null;
            }

            var from = Math.Max(joined, runningSince);
            if (limits.Timeout > TimeSpan.Zero && Stopwatch.GetElapsedTime(from) > limits.Timeout)
            {
                return BuildOutcome.Failed(BuildFailureKind.TimedOut, LimitMessages.TimedOut(job, limits.Timeout));
            }

            if (limits.MaxSilentTime > TimeSpan.Zero && Stopwatch.GetElapsedTime(Math.Max(from, _lastLine)) > limits.MaxSilentTime)
            {
                return BuildOutcome.Failed(BuildFailureKind.TimedOut, LimitMessages.Silent(job, limits.MaxSilentTime));
            }

            return null;
        }
    }
}

/// <summary>How a step ended: the agent's outcome, and the build record it was saved as.</summary>
internal sealed record StepOutcome(BuildOutcome Outcome, long BuildId, bool Reused);
