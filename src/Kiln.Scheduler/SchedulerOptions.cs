namespace Kiln.Scheduler;

/// <summary>Operator settings for building.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Kiln's limits; a client may ask for tighter ones, never looser.</summary>
    public TimeSpan MaxSilentTime { get; init; }

    public TimeSpan Timeout { get; init; }

    public long MaxLogSize { get; init; }

    /// <summary><c>NIX_BUILD_CORES</c>.</summary>
    public int Cores { get; init; } = Environment.ProcessorCount;

    /// <summary>Log lines kept in memory per running build, for sessions that join it late.</summary>
    public int JoinBacklogLines { get; init; } = 10_000;
}
