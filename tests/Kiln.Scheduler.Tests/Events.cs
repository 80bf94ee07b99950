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

    public void Message(string text)
    {
    }
}
