namespace Kiln.Store.Metadata.Postgres;

// IAgentMetadata: agent tokens, agents' last known state and stock builders (the statements are AgentRows').
public sealed partial class PostgresMetadataStore
{
    public Task<AgentTokenRecord?> AddAgentTokenAsync(string name, string tokenHash, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            var created = MetadataRows.Now();
            using var insert = Command(connection, AgentRows.AddToken, transaction, ("n", name), ("h", tokenHash), ("t", created));
            return await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is long id ? new AgentTokenRecord(id, name, created, null) : null;
        }, cancellationToken);

    public Task<AgentTokenRecord?> FindAgentTokenAsync(string tokenHash, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, AgentRows.FindToken, null, ("h", tokenHash));
            return await ReadOneAsync(select, AgentRows.ReadToken, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<AgentTokenRecord>> ListAgentTokensAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<AgentTokenRecord>>(async connection =>
        {
            using var select = Command(connection, AgentRows.ListTokens);
            return await ReadAllAsync(select, AgentRows.ReadToken, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<bool> RevokeAgentTokenAsync(string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, AgentRows.RevokeToken, transaction, ("n", name), ("t", MetadataRows.Now()));
            return await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task ReportAgentAsync(AgentRecord agent, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var upsert = Command(connection, AgentRows.Report, transaction, AgentRows.ReportParameters(agent, ""));
            return await upsert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<AgentRecord>> ListAgentsAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<AgentRecord>>(async connection =>
        {
            using var select = Command(connection, AgentRows.ListAgents);
            return await ReadAllAsync(select, AgentRows.ReadAgent, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<bool> AddBuilderAsync(BuilderRecord builder, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, AgentRows.AddBuilder, transaction, AgentRows.BuilderParameters(builder, ""));
            return await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<bool> RemoveBuilderAsync(string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var delete = Command(connection, AgentRows.RemoveBuilder, transaction, ("n", name));
            return await delete.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<IReadOnlyList<BuilderRecord>> ListBuildersAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<BuilderRecord>>(async connection =>
        {
            using var select = Command(connection, AgentRows.ListBuilders);
            return await ReadAllAsync(select, AgentRows.ReadBuilder, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
}
