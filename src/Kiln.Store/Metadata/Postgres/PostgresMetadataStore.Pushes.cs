namespace Kiln.Store.Metadata.Postgres;

// IPushMetadata: the queue of pushes to accounts' own caches; claims skip rows another front door holds.
public sealed partial class PostgresMetadataStore
{
    public Task<long> AddPushAsync(long account, long build, string target, IReadOnlyList<string> paths, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(paths);
        return WriteAsync(async (connection, transaction) =>
        {
            await using var insert = Command(connection, MetadataRows.AddPush, transaction,
                ("a", account), ("b", build), ("t", target), ("p", string.Join(' ', paths)), ("n", MetadataRows.Now()));
            return (long)(await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }, cancellationToken);
    }

    public Task<IReadOnlyList<PushRecord>> ClaimPushesAsync(long now, long leaseUntil, int limit, CancellationToken cancellationToken, IReadOnlyCollection<long>? skip = null) =>
        WriteAsync<IReadOnlyList<PushRecord>>(async (connection, transaction) =>
        {
            await using var claim = Command(connection, MetadataRows.ClaimPushes(skipLocked: true, skip), transaction, ("n", now), ("l", leaseUntil), ("c", (long)limit));
            return await ReadAllAsync(claim, MetadataRows.ReadPush, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task FinishPushAsync(long id, int attempt, PushState state, long uploaded, string message, long retryAt, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using var update = Command(connection, MetadataRows.FinishPush, transaction, ("i", id), ("t", (long)attempt), ("s", MetadataRows.StateName(state)), ("u", uploaded),
                ("e", message), ("r", retryAt), ("f", state == PushState.Queued ? 0 : MetadataRows.Now()));
            await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task ReleasePushAsync(long id, int attempt, long due, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using var release = Command(connection, MetadataRows.ReleasePush, transaction, ("i", id), ("t", (long)attempt), ("n", due));
            await release.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<int> PrunePushesAsync(long before, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using var prune = Command(connection, MetadataRows.PrunePushes, transaction, ("b", before));
            return await prune.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<PushRecord>> GetPushesAsync(long account, long build, int limit, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<PushRecord>>(async connection =>
        {
            await using var select = Command(connection, MetadataRows.Pushes, null, ("a", account), ("b", build), ("c", (long)limit));
            return await ReadAllAsync(select, MetadataRows.ReadPush, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
}
