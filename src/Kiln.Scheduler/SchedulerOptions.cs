namespace Kiln.Scheduler;

/// <summary>Operator settings for building.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Kiln's limits; a client may ask for tighter ones, never looser.</summary>
    public TimeSpan MaxSilentTime { get; init; }

    public TimeSpan Timeout { get; init; }

    public long MaxLogSize { get; init; }

    /// <summary>The most memory one build uses, its tmpfs files included (zero: no limit).</summary>
    public long BuildMemory { get; init; }

    /// <summary>The most processes one build runs at once (zero: no limit).</summary>
    public int BuildProcesses { get; init; }

    /// <summary>The most bytes one build writes to disk, its outputs included (zero: no limit).</summary>
    public long BuildDisk { get; init; }

    /// <summary><c>NIX_BUILD_CORES</c>.</summary>
    public int Cores { get; init; } = Environment.ProcessorCount;

    /// <summary>Log lines kept in memory per running build, for sessions that join it late.</summary>
    public int JoinBacklogLines { get; init; } = 10_000;
}
