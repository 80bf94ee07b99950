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
/// The farm's bookkeeping: agent tokens (created and revoked by the operator; only hashes kept) and each agent's last
/// known state, which every front door writes and <c>kiln agents list</c> reads.
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
}
