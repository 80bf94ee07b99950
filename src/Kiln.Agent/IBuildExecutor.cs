using Kiln.Nix.Hashing;

namespace Kiln.Agent;

/// <summary>
/// Runs builds. The scheduler calls this; the embedded agent implements it in-process, and a remote agent will
/// implement it behind a lease. Implementations never throw for a build's own failure: that is an outcome.
/// </summary>
public interface IBuildExecutor
{
    /// <summary>How many builds may run at once.</summary>
    int Slots { get; }

    Task<BuildOutcome> BuildAsync(BuildJob job, IBuildLog log, CancellationToken cancellationToken);
}

/// <summary>Where a build's log goes, line by line, as the builder writes it.</summary>
public interface IBuildLog
{
    /// <summary>An agent has taken the build and begins it: the clocks of the time limits start now, not in the queue.</summary>
    void Running();

    void Line(string line);

    /// <summary>
    /// A line for the waiting sessions of one account only, kept out of the build's log (which every account the build
    /// is for reads): what it says is that account's business (its own limits, its own line).
    /// </summary>
    void NoteFor(long account, string line) => Line(line);
}

/// <summary>The store as an agent needs it: input NARs to read, output NARs to keep.</summary>
public interface IAgentStore
{
    /// <summary>Opens the NAR with this hash; it must exist.</summary>
    Task<Stream> OpenNarAsync(NixHash narHash, CancellationToken cancellationToken);

    /// <summary>Whether the store still holds the NAR with this hash (an unpacked copy of one it dropped is pruned).</summary>
    ValueTask<bool> HasNarAsync(NixHash narHash, CancellationToken cancellationToken);

    /// <summary>Starts a NAR the agent writes (the store hashes it as it goes); nothing is kept unless it is committed.</summary>
    IPendingNar CreateNar();
}

/// <summary>A NAR being written to the store.</summary>
public interface IPendingNar : IDisposable
{
    /// <summary>Appends the NAR's next bytes.</summary>
    void Write(ReadOnlySpan<byte> data);

    /// <summary>Ends the NAR; returns its SHA-256 and size.</summary>
    (NixHash NarHash, long NarSize) Complete();

    /// <summary>Keeps the completed NAR under its hash (once, however often the same NAR is committed).</summary>
    void Commit();
}

/// <summary>
/// The executor could not run the build for a reason of its own, not the build's (a stock builder it cannot reach, a
/// connection that broke): the job goes back to the queue rather than failing. <see cref="Exception.Message"/> is what
/// the build's log may say (it reaches tenants); <see cref="Detail"/> is for the server's log only. When
/// <see cref="Counted"/> is false the executor itself is unavailable (nothing of the job was tried): the job is given
/// back without counting an attempt, and the agent waits before it claims again.
/// </summary>
public sealed class ExecutorUnavailableException(string message, string detail, bool counted, Exception? inner = null) : Exception(message, inner)
{
    public string Detail => detail;

    public bool Counted => counted;
}
