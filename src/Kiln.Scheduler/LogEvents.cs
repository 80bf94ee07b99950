namespace Kiln.Scheduler;

/// <summary>The scheduler's and agents' log event ids (5000–5999; the registry of ranges is in ARCHITECTURE.md).</summary>
internal static class LogEvents
{
    public const int BuildDone = 5001;
    public const int BuildFailedInKiln = 5002;
    public const int AgentStarted = 5010;
    public const int AgentFailed = 5011;
    public const int AgentStopped = 5012;
}
