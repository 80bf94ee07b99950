namespace Kiln.Store.Metadata;

/// <summary>A token remote agents dial in with (only its SHA-256 is kept). Times are Unix seconds.</summary>
public sealed record AgentTokenRecord(long Id, string Name, long Created, long? Revoked);

/// <summary>
/// An agent as last seen by a front door: what it advertised when it connected, and what its heartbeats said since.
/// Times are Unix seconds.
/// </summary>
public sealed record AgentRecord
{
    /// <summary>The name the agent gave (by default its host name); one row per name.</summary>
    public required string Name { get; init; }

    /// <summary>The name of the agent token it connected with.</summary>
    public required string TokenName { get; init; }

    public IReadOnlyList<string> Systems { get; init; } = [];

    public IReadOnlyList<string> Features { get; init; } = [];

    public int Slots { get; init; }

    public int SlotsBusy { get; init; }

    public int Cores { get; init; }

    public long MemoryBytes { get; init; }

    public long InputCacheBytes { get; init; }

    public long BuildsRun { get; init; }

    public long LastSeen { get; init; }

    /// <summary>The front door it is connected to.</summary>
    public string FrontDoor { get; init; } = "";

    /// <summary>Whether it is connected now (false once it disconnected or its front door dropped it).</summary>
    public bool Connected { get; init; }
}

/// <summary>
/// A stock Nix machine the operator added as a builder: Kiln logs in over SSH and speaks the worker protocol to its
/// daemon. Times are Unix seconds.
/// </summary>
public sealed record BuilderRecord
{
    public required string Name { get; init; }

    /// <summary>Where it is: <c>ssh-ng://user@host[:port]</c>.</summary>
    public required string Uri { get; init; }

    public IReadOnlyList<string> Systems { get; init; } = [];

    public IReadOnlyList<string> Features { get; init; } = [];

    /// <summary>How many builds Kiln runs there at once.</summary>
    public int MaxJobs { get; init; } = 1;

    /// <summary>The private key Kiln logs in with (OpenSSH format); never shown.</summary>
    public string SshKey { get; init; } = "";

    /// <summary>The builder's public host key (<c>ssh-ed25519 AAAA…</c>); empty: learnt on first contact and kept.</summary>
    public string HostKey { get; init; } = "";

    public long Created { get; init; }

    // The generated ToString would print the private key: a record logged or shown by mistake must not.
    private bool PrintMembers(System.Text.StringBuilder builder)
    {
        builder.Append($"Name = {Name}, Uri = {Uri}, Systems = [{string.Join(", ", Systems)}], Features = [{string.Join(", ", Features)}], MaxJobs = {MaxJobs}");
        return true;
    }
}

/// <summary>
/// The farm's bookkeeping: agent tokens (created and revoked by the operator; only hashes kept), each agent's last
/// known state, which every front door writes and <c>kiln agents list</c> reads, and the stock Nix builders.
/// </summary>
public interface IAgentMetadata
{
    /// <summary>Adds a token under a new name; null when the name is taken (revoked names stay taken: logs name them).</summary>
    Task<AgentTokenRecord?> AddAgentTokenAsync(string name, string tokenHash, CancellationToken cancellationToken);

    /// <summary>The token with this hash, unless revoked.</summary>
    Task<AgentTokenRecord?> FindAgentTokenAsync(string tokenHash, CancellationToken cancellationToken);

    Task<IReadOnlyList<AgentTokenRecord>> ListAgentTokensAsync(CancellationToken cancellationToken);

    /// <summary>Revokes the token by name; false when there is no such token or it was revoked already.</summary>
    Task<bool> RevokeAgentTokenAsync(string name, CancellationToken cancellationToken);

    /// <summary>Records an agent's state (by name: a reconnecting agent replaces its row).</summary>
    Task ReportAgentAsync(AgentRecord agent, CancellationToken cancellationToken);

    /// <summary>Every agent ever seen, by name.</summary>
    Task<IReadOnlyList<AgentRecord>> ListAgentsAsync(CancellationToken cancellationToken);

    /// <summary>Adds a stock Nix builder; false when the name is taken.</summary>
    Task<bool> AddBuilderAsync(BuilderRecord builder, CancellationToken cancellationToken);

    /// <summary>Removes the builder by name; false when there is none.</summary>
    Task<bool> RemoveBuilderAsync(string name, CancellationToken cancellationToken);

    /// <summary>Every builder, by name (with its key: callers show only what they must).</summary>
    Task<IReadOnlyList<BuilderRecord>> ListBuildersAsync(CancellationToken cancellationToken);
}
