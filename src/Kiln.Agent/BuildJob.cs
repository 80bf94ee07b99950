using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Agent;

/// <summary>
/// One derivation to build, with everything the builder may see. It carries contents by NAR hash, not by store
/// path, because two accounts may hold different contents under one input-addressed path: an agent materialises
/// exactly the contents the requesting view holds.
/// </summary>
public sealed record BuildJob
{
    public required StorePath DrvPath { get; init; }

    /// <summary>The derivation; its output paths are the ones the outputs must end up at.</summary>
    public required Derivation Derivation { get; init; }

    /// <summary>The input closure: inputSrcs, the wanted outputs of input derivations, and everything they refer to.</summary>
    public required IReadOnlyList<BuildInput> Inputs { get; init; }

    public BuildLimits Limits { get; init; } = new();

    /// <summary>
    /// The paths an output may refer to that a reference scan can recognise: the inputs and the derivation's output
    /// paths (content-addressed derivations are not built, so these are all an output may name).
    /// </summary>
    public IReadOnlyList<StorePath> ReferenceCandidates() =>
        Inputs.Select(i => i.Path).Concat(Derivation.Outputs.Values.Select(o => o.StorePath).OfType<StorePath>()).Distinct().ToList();
}

/// <summary>A store path the builder sees, read-only, at its <c>/nix/store</c> path.</summary>
public sealed record BuildInput(StorePath Path, NixHash NarHash, long NarSize, IReadOnlyList<StorePath> References);

/// <summary>What a build may use; zero means no limit (Nix's defaults).</summary>
public sealed record BuildLimits
{
    /// <summary><c>NIX_BUILD_CORES</c>.</summary>
    public int Cores { get; init; } = 1;

    public TimeSpan MaxSilentTime { get; init; }

    public TimeSpan Timeout { get; init; }

    public long MaxLogSize { get; init; }

    /// <summary>
    /// The most memory the build's processes and the files in its in-memory file systems (<c>/</c> with <c>/tmp</c>,
    /// the build directory, <c>/dev/shm</c>) use together; each of those file systems is also this size at most.
    /// </summary>
    public long MemoryBytes { get; init; }

    /// <summary>The most processes and threads the build runs at once (a fork bomb stops here).</summary>
    public int Processes { get; init; }

    /// <summary>
    /// The most bytes the build writes to disk: its outputs and whatever else it leaves in <c>/nix/store</c> (and its
    /// build directory where that is not in memory), by apparent size, as the outputs' NARs will hold them.
    /// </summary>
    public long DiskBytes { get; init; }
}

/// <summary>How a build ended, in the terms Nix reports (its <c>BuildResult::Status</c> failure values).</summary>
public enum BuildFailureKind
{
    None,

    /// <summary>The builder failed; building again will fail again.</summary>
    PermanentFailure,

    /// <summary>The builder ran but its outputs were refused (missing, wrong hash, forbidden references…).</summary>
    OutputRejected,

    /// <summary>A fixed-output builder failed (a download, say); it may work another time.</summary>
    TransientFailure,

    /// <summary>The job could not be set up (an input or attribute the derivation names is wrong).</summary>
    InputRejected,

    TimedOut,

    LogLimitExceeded,

    /// <summary>Kiln failed, not the build (the sandbox could not start, the disk is full…).</summary>
    MiscFailure,
}

/// <summary>An output as stored: its NAR is in the output sink under <see cref="NarHash"/>.</summary>
public sealed record BuiltOutput(string Name, StorePath Path, NixHash NarHash, long NarSize, IReadOnlyList<StorePath> References, ContentAddress? ContentAddress);

/// <summary>The end of a build: its outputs on success, what went wrong otherwise, and what it used.</summary>
public sealed record BuildOutcome
{
    public BuildFailureKind Failure { get; init; }

    /// <summary>Nix's message for the failure (without "error: "); empty on success.</summary>
    public string ErrorMessage { get; init; } = "";

    public IReadOnlyList<BuiltOutput> Outputs { get; init; } = [];

    public DateTimeOffset StartTime { get; init; }

    public DateTimeOffset StopTime { get; init; }

    public TimeSpan? CpuUser { get; init; }

    public TimeSpan? CpuSystem { get; init; }

    public long? PeakMemoryBytes { get; init; }

    /// <summary>The builder's exit status, when it ran and failed.</summary>
    public int? ExitCode { get; init; }

    /// <summary>The last lines of the log (for the failure message Nix shows).</summary>
    public IReadOnlyList<string> LogTail { get; init; } = [];

    /// <summary>The kernel killed processes of the build for going over its memory limit (a failure then may be the limit's).</summary>
    public bool OutOfMemory { get; init; }

    /// <summary>The agent that ran the build (set by the job queue; empty when none did).</summary>
    public string Agent { get; init; } = "";

    public bool Succeeded => Failure == BuildFailureKind.None;

    /// <summary>A build that ended before or without its builder running to completion.</summary>
    public static BuildOutcome Failed(BuildFailureKind kind, string message) => new() { Failure = kind, ErrorMessage = message };
}
