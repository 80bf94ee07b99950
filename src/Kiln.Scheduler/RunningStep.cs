using Kiln.Agent;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Worker;
using Kiln.Store.Logs;

namespace Kiln.Scheduler;

/// <summary>
/// A build in flight, shared by every session that wants it: the first starts it, later ones join and get the log
/// so far, then the live log. It is cancelled only when no session waits for it any more. It is the job's log sink:
/// lines go to the build's own log and to every session watching.
/// </summary>
internal sealed class RunningStep : IBuildLog, IDisposable
{
    private readonly Lock _gate = new();
    private readonly List<(IBuildEvents Events, long Activity)> _watchers = [];
    private readonly Queue<string> _backlog = new();
    private readonly int _backlogLimit;
    private readonly CancellationTokenSource _cancel = new();
    private readonly TaskCompletionSource<long?> _buildId = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private IBuildLogWriter? _log;
    private int _waiters;

    public RunningStep(string key, StorePath drvPath, long startedFor, int backlogLimit)
    {
        Key = key;
        DrvPath = drvPath;
        StartedFor = startedFor;
        _backlogLimit = backlogLimit;
    }

    public string Key { get; }

    public StorePath DrvPath { get; }

    /// <summary>The account whose request started the build.</summary>
    public long StartedFor { get; }

    /// <summary>The build's record, once it is written (null if it could not be).</summary>
    public Task<long?> BuildId => _buildId.Task;

    /// <summary>Fires when no session waits for the build any more.</summary>
    public CancellationToken Cancellation => _cancel.Token;

    /// <summary>The build's end; set by whoever started it.</summary>
    public Task<StepOutcome> Completion { get; set; } = null!;

    /// <summary>The build has its record and its log.</summary>
    public void Started(long? id, IBuildLogWriter? log)
    {
        lock (_gate)
        {
            _log ??= log;
        }

        _buildId.TrySetResult(id);
    }

    /// <summary>Waits for the build as one more interested session.</summary>
    public async Task<StepOutcome> JoinAsync(IBuildEvents events, CancellationToken cancellationToken)
    {
        long activity;
        lock (_gate)
        {
            _waiters++;
            activity = events.BuildStarted(DrvPath);
            foreach (var line in _backlog)
            {
                events.LogLine(activity, line);
            }

            _watchers.Add((events, activity));
        }

        try
        {
            return await Completion.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            lock (_gate)
            {
                _watchers.Remove((events, activity));
                events.BuildStopped(activity);
                if (--_waiters == 0 && !Completion.IsCompleted)
                {
                    try
                    {
                        _cancel.Cancel(); // nobody wants it any more
                    }
                    catch (ObjectDisposedException)
                    {
                        // it has just finished
                    }
                }
            }
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

            foreach (var (events, activity) in _watchers)
            {
                events.LogLine(activity, line);
            }
        }
    }

    /// <summary>The build has ended: closes the log.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _log?.Dispose();
            _cancel.Dispose();
        }

        _buildId.TrySetResult(null);
    }
}

/// <summary>How a step ended: the agent's outcome, and the build record it was saved as.</summary>
internal sealed record StepOutcome(BuildOutcome Outcome, long BuildId, bool Reused);
