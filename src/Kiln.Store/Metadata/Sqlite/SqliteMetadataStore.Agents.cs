using Microsoft.Data.Sqlite;

namespace Kiln.Store.Metadata.Sqlite;

// IAgentMetadata: agent tokens, agents' last known state and stock builders (the statements are AgentRows').
public sealed partial class SqliteMetadataStore
{
    public Task<AgentTokenRecord?> AddAgentTokenAsync(string name, string tokenHash, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            var created = MetadataRows.Now();
            using var insert = Command(connection, AgentRows.AddToken, transaction, ("@n", name), ("@h", tokenHash), ("@t", created));
            return await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is long id ? new AgentTokenRecord(id, name, created, null) : null;
        }, cancellationToken);

    public Task<AgentTokenRecord?> FindAgentTokenAsync(string tokenHash, CancellationToken cancellationToken) =>
        ReadAsync(async connection => (await ReadRowsAsync(Command(connection, AgentRows.FindToken, null, ("@h", tokenHash)), AgentRows.ReadToken, cancellationToken)
            .ConfigureAwait(false)).FirstOrDefault(), cancellationToken);

    public Task<IReadOnlyList<AgentTokenRecord>> ListAgentTokensAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<AgentTokenRecord>>(async connection =>
            await ReadRowsAsync(Command(connection, AgentRows.ListTokens), AgentRows.ReadToken, cancellationToken).ConfigureAwait(false), cancellationToken);

    public Task<bool> RevokeAgentTokenAsync(string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, AgentRows.RevokeToken, transaction, ("@n", name), ("@t", MetadataRows.Now()));
            return await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task ReportAgentAsync(AgentRecord agent, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var upsert = Command(connection, AgentRows.Report, transaction, AgentRows.ReportParameters(agent, "@"));
            return await upsert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<AgentRecord>> ListAgentsAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<AgentRecord>>(async connection =>
            await ReadRowsAsync(Command(connection, AgentRows.ListAgents), AgentRows.ReadAgent, cancellationToken).ConfigureAwait(false), cancellationToken);

    public Task<bool> AddBuilderAsync(BuilderRecord builder, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, AgentRows.AddBuilder, transaction, AgentRows.BuilderParameters(builder, "@"));
            return await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<bool> RemoveBuilderAsync(string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var delete = Command(connection, AgentRows.RemoveBuilder, transaction, ("@n", name));
            return await delete.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<IReadOnlyList<BuilderRecord>> ListBuildersAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<BuilderRecord>>(async connection =>
            await ReadRowsAsync(Command(connection, AgentRows.ListBuilders), AgentRows.ReadBuilder, cancellationToken).ConfigureAwait(false), cancellationToken);

    private static async Task<List<T>> ReadRowsAsync<T>(SqliteCommand command, Func<SqliteDataReader, T> read, CancellationToken cancellationToken)
    {
        using (command)
        {
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var rows = new List<T>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                rows.Add(read(reader));
            }

            return rows;
        }
    }
}
