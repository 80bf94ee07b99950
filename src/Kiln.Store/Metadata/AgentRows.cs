using System.Data.Common;

namespace Kiln.Store.Metadata;

/// <summary>
/// The farm's statements and row readers, the same for both providers (each binds <c>@name</c> parameters its own
/// way; SQLite stores the booleans as 0/1).
/// </summary>
internal static class AgentRows
{
    public const string AddToken = "INSERT INTO agent_tokens (name, token_hash, created) VALUES (@n, @h, @t) ON CONFLICT DO NOTHING RETURNING id";

    public const string TokenColumns = "id, name, created, revoked";

    public const string FindToken = $"SELECT {TokenColumns} FROM agent_tokens WHERE token_hash = @h AND revoked IS NULL";

    public const string ListTokens = $"SELECT {TokenColumns} FROM agent_tokens ORDER BY name";

    public const string RevokeToken = "UPDATE agent_tokens SET revoked = @t WHERE name = @n AND revoked IS NULL";

    public const string Report = """
        INSERT INTO agents (name, token_name, systems, features, slots, slots_busy, cores, memory, input_cache_bytes, builds_run, last_seen, front_door, connected)
        VALUES (@n, @k, @sy, @f, @sl, @b, @c, @m, @i, @r, @t, @d, @on)
        ON CONFLICT (name) DO UPDATE SET token_name = excluded.token_name, systems = excluded.systems, features = excluded.features,
            slots = excluded.slots, slots_busy = excluded.slots_busy, cores = excluded.cores, memory = excluded.memory,
            input_cache_bytes = excluded.input_cache_bytes, builds_run = excluded.builds_run, last_seen = excluded.last_seen,
            front_door = excluded.front_door, connected = excluded.connected
        """;

    public const string ListAgents = """
        SELECT name, token_name, systems, features, slots, slots_busy, cores, memory, input_cache_bytes, builds_run, last_seen, front_door, connected
        FROM agents ORDER BY name
        """;

    public const string AddBuilder = """
        INSERT INTO builders (name, uri, systems, features, max_jobs, ssh_key, host_key, created)
        VALUES (@n, @u, @sy, @f, @j, @k, @h, @t) ON CONFLICT DO NOTHING
        """;

    public const string RemoveBuilder = "DELETE FROM builders WHERE name = @n";

    public const string ListBuilders = "SELECT name, uri, systems, features, max_jobs, ssh_key, host_key, created FROM builders ORDER BY name";

    public static (string Name, object? Value)[] BuilderParameters(BuilderRecord builder, string prefix)
    {
        ArgumentNullException.ThrowIfNull(builder);
        return
        [
            (prefix + "n", builder.Name), (prefix + "u", builder.Uri), (prefix + "sy", string.Join(' ', builder.Systems)), (prefix + "f", string.Join(' ', builder.Features)),
            (prefix + "j", (long)builder.MaxJobs), (prefix + "k", builder.SshKey), (prefix + "h", builder.HostKey), (prefix + "t", builder.Created),
        ];
    }

    public static BuilderRecord ReadBuilder(DbDataReader reader) => new()
    {
        Name = reader.GetString(0),
        Uri = reader.GetString(1),
        Systems = reader.GetString(2).Split(' ', StringSplitOptions.RemoveEmptyEntries),
        Features = reader.GetString(3).Split(' ', StringSplitOptions.RemoveEmptyEntries),
        MaxJobs = (int)reader.GetInt64(4),
        SshKey = reader.GetString(5),
        HostKey = reader.GetString(6),
        Created = reader.GetInt64(7),
    };

    public static (string Name, object? Value)[] ReportParameters(AgentRecord agent, string prefix)
    {
        ArgumentNullException.ThrowIfNull(agent);
        return
        [
            (prefix + "n", agent.Name), (prefix + "k", agent.TokenName), (prefix + "sy", string.Join(' ', agent.Systems)), (prefix + "f", string.Join(' ', agent.Features)),
            (prefix + "sl", (long)agent.Slots), (prefix + "b", (long)agent.SlotsBusy), (prefix + "c", (long)agent.Cores), (prefix + "m", agent.MemoryBytes),
            (prefix + "i", agent.InputCacheBytes), (prefix + "r", agent.BuildsRun), (prefix + "t", agent.LastSeen), (prefix + "d", agent.FrontDoor),
            (prefix + "on", agent.Connected),
        ];
    }

    public static AgentTokenRecord ReadToken(DbDataReader reader) =>
        new(reader.GetInt64(0), reader.GetString(1), reader.GetInt64(2), reader.IsDBNull(3) ? null : reader.GetInt64(3));

    public static AgentRecord ReadAgent(DbDataReader reader) => new()
    {
        Name = reader.GetString(0),
        TokenName = reader.GetString(1),
        Systems = reader.GetString(2).Split(' ', StringSplitOptions.RemoveEmptyEntries),
        Features = reader.GetString(3).Split(' ', StringSplitOptions.RemoveEmptyEntries),
        Slots = (int)reader.GetInt64(4),
        SlotsBusy = (int)reader.GetInt64(5),
        Cores = (int)reader.GetInt64(6),
        MemoryBytes = reader.GetInt64(7),
        InputCacheBytes = reader.GetInt64(8),
        BuildsRun = reader.GetInt64(9),
        LastSeen = reader.GetInt64(10),
        FrontDoor = reader.GetString(11),
        Connected = reader.GetBoolean(12),
    };
}
