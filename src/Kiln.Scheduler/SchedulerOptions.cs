namespace Kiln.Scheduler;

/// <summary>Operator settings for building.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Kiln's limits; a client may ask for tighter ones, never looser.</summary>
    public TimeSpan MaxSilentTime { get; init; }

    public TimeSpan Timeout { get; init; }

    public long MaxLogSize { get; init; }

    /// <summary>The most memory one build uses, its tmpfs files included (zero: no limit, and no sizing).</summary>
    public long BuildMemory { get; init; }

    /// <summary>The least memory a build is given, whatever its history says.</summary>
    public long MinMemory { get; init; } = 256L << 20;

    /// <summary>The memory a build of a package never built before is given (zero: <see cref="BuildMemory"/>).</summary>
    public long DefaultMemory { get; init; }

    /// <summary>The most processes one build runs at once (zero: no limit).</summary>
    public int BuildProcesses { get; init; }

    /// <summary>The most bytes one build writes to disk, its outputs included (zero: no limit).</summary>
    public long BuildDisk { get; init; }

    /// <summary><c>NIX_BUILD_CORES</c> at most (the cores one build may use; the top of what history grants).</summary>
    public int Cores { get; init; } = Environment.ProcessorCount;

    /// <summary>The fewest cores a build is given, whatever its history says (at <see cref="Cores"/>: no sizing).</summary>
    public int MinCores { get; init; } = int.MaxValue;

    /// <summary>The cores a build of a package never built before is given (zero: <see cref="Cores"/>).</summary>
    public int DefaultCores { get; init; }

    /// <summary>Log lines kept in memory per running build, for sessions that join it late.</summary>
    public int JoinBacklogLines { get; init; } = 10_000;

    /// <summary>
    /// This front door's name in step claims (<see cref="Kiln.Store.Metadata.IBuildMetadata.ClaimStepAsync"/>), the same
    /// from one start to the next (its host and data directory), so a restart can release what it held before.
    /// </summary>
    public string FrontDoor { get; init; } = $"{Environment.MachineName}:{Environment.ProcessId}";

    /// <summary>How long a step claim lasts unless renewed: a front door that stops renewing (killed, cut off) loses its steps after this.</summary>
    public TimeSpan ClaimLease { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How often this front door publishes its queue on the board and takes the cancels asked of it (several front doors).</summary>
    public TimeSpan QueueShareInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How long a queue publication lasts unless renewed: a front door that went away drops out of listings after this.</summary>
    public TimeSpan QueueShareLife { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>How often a step another front door builds is looked at, for its end or a lapsed claim.</summary>
    public TimeSpan ClaimPoll { get; init; } = TimeSpan.FromMilliseconds(500);
}
