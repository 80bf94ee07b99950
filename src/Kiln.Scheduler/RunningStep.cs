using Kiln.Agent;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Worker;

namespace Kiln.Scheduler;

/// <summary>
/// A build in flight, shared by every session that wants it: the first starts it, later ones join and get the log
/// so far, then the live log. It is cancelled only when no session waits for it any more.
/// </summary>
internal sealed class RunningStep : IBuildLog, IDisposable
{
    private readonly object _gate = new();
    private readonly List<(IBuildEvents Events, long Activity)> _watchers = [];
    private readonly Queue<string> _backlog = new();
    private readonly int _backlogLimit;
    private readonly CancellationTokenSource _cancel = new();
    private readonly StreamWriter? _logFile;
    private int _waiters;

    public RunningStep(string key, StorePath drvPath, int backlogLimit, string? logFile)
    {
        Key = key;
        DrvPath = drvPath;
        _backlogLimit = backlogLimit;
        if (logFile is not null)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(logFile)!);
            _logFile = new StreamWriter(logFile, append: false) { AutoFlush = false };
        }
    }

    public string Key { get; }

    public StorePath DrvPath { get; }

    public CancellationToken Cancellation => _cancel.Token;

    /// <summary>The build's end; set by whoever started it.</summary>
    public Task<StepOutcome> Completion { get; set; } = null!;

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
            _logFile?.WriteLine(line);
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

    /// <summary>The build has ended: closes the log file.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _logFile?.Dispose();
            _cancel.Dispose();
        }
    }
}

/// <summary>How a step ended: the agent's outcome, and the build record it was saved as.</summary>
internal sealed record StepOutcome(BuildOutcome Outcome, long BuildId, bool Reused);
