using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;

namespace Kiln.Protocol.Worker;

/// <summary>
/// Building, as one worker-protocol session needs it (the protocol's second port, beside <see cref="IWorkerStore"/>).
/// Failures of builds are results; exceptions are for requests that cannot be served at all.
/// </summary>
public interface IWorkerBuilder
{
    /// <summary>Realises each target (BuildPaths, BuildPathsWithResults); one result per target, in order.</summary>
    Task<IReadOnlyList<BuildResult>> BuildPathsAsync(IReadOnlyList<DerivedPath> targets, ClientBuildSettings settings, IBuildEvents events, CancellationToken cancellationToken);

    /// <summary>Builds a derivation sent whole, with its inputs already in the store (BuildDerivation: remote builders).</summary>
    Task<BuildResult> BuildDerivationAsync(StorePath drvPath, Derivation derivation, ClientBuildSettings settings, IBuildEvents events, CancellationToken cancellationToken);
}

/// <summary>What the client asked for with SetOptions that Kiln honours: requests, never able to relax limits.</summary>
public sealed record ClientBuildSettings
{
    public bool KeepGoing { get; init; }

    /// <summary>The client's <c>max-silent-time</c> (0: none); Kiln's own limit still applies.</summary>
    public TimeSpan MaxSilentTime { get; init; }

    /// <summary>The client's <c>timeout</c> (0: none).</summary>
    public TimeSpan Timeout { get; init; }

    /// <summary>The client's <c>max-build-log-size</c> in bytes (0: none); Kiln's own limit still applies.</summary>
    public long MaxLogSize { get; init; }

    /// <summary>Whether the client shows build logs itself (then failure messages carry no log tail).</summary>
    public bool VerboseBuild { get; init; }
}

/// <summary>Build progress for the client: Nix's Build activities with their log lines. Called from any thread.</summary>
public interface IBuildEvents
{
    /// <summary>A build of <paramref name="drvPath"/> starts (or is joined); returns the activity that carries its log.</summary>
    long BuildStarted(StorePath drvPath);

    void LogLine(long activity, string line);

    void BuildStopped(long activity);

    /// <summary>A message for the client's terminal (a warning, a queue position).</summary>
    void Message(string text);
}
