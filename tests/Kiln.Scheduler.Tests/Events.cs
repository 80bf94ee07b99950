using System.Collections.Concurrent;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Worker;

namespace Kiln.Scheduler.Tests;

/// <summary>What a session's client would see: build log lines and messages.</summary>
internal sealed class Events : IBuildEvents
{
    private long _next;

    public ConcurrentQueue<string> Queue { get; } = new();

    public List<string> Lines => [.. Queue];

    public long BuildStarted(StorePath drvPath) => Interlocked.Increment(ref _next);

    public void LogLine(long activity, string line) => Queue.Enqueue(line);

    public void BuildStopped(long activity)
    {
    }

    /// <summary>The messages for the client's terminal (not of any build's log).</summary>
    public ConcurrentQueue<string> Messages { get; } = new();

    public void Message(string text) => Messages.Enqueue(text);
}
