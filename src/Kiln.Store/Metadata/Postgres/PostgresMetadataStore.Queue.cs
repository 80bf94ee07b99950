using NpgsqlTypes;

namespace Kiln.Store.Metadata.Postgres;

// IQueueBoard: front doors on one database show each other their queues and pass on cancels.
public sealed partial class PostgresMetadataStore
{
    public Task PublishQueueAsync(string owner, IReadOnlyCollection<BoardEntry>? entries, int waiting, string? farm, long expires, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using (var board = Command(connection, MetadataRows.PublishBoard, transaction, ("o", owner), ("w", waiting), ("f", farm), ("e", expires)))
            {
                await board.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }

            if (entries is null)
            {
                return;
            }

            // The whole publication in one statement: the old entries out, the new ones in (one array per column).
            using var replace = Command(connection, """
                WITH cleared AS (DELETE FROM queue_entries WHERE owner = @o)
                INSERT INTO queue_entries (owner, account, build_id, drv_path, state, position, agent)
                SELECT @o, * FROM unnest(@a, @b, @d, @s, @p, @g)
                """, transaction, ("o", owner));
            replace.Parameters.Add(new Npgsql.NpgsqlParameter("a", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = entries.Select(e => e.Account).ToArray() });
            replace.Parameters.Add(new Npgsql.NpgsqlParameter("b", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = entries.Select(e => e.BuildId).ToArray() });
            replace.Parameters.Add(new Npgsql.NpgsqlParameter("d", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = entries.Select(e => e.DrvPath).ToArray() });
            replace.Parameters.Add(new Npgsql.NpgsqlParameter("s", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = entries.Select(e => e.State).ToArray() });
            replace.Parameters.Add(new Npgsql.NpgsqlParameter("p", NpgsqlDbType.Array | NpgsqlDbType.Integer) { Value = entries.Select(e => e.Position).ToArray() });
            replace.Parameters.Add(new Npgsql.NpgsqlParameter("g", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = entries.Select(e => e.Agent).ToArray() });
            await replace.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<BoardView> ReadBoardAsync(long account, string exceptOwner, long now, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            // Both questions in one round trip.
            using var batch = new Npgsql.NpgsqlBatch(connection)
            {
                BatchCommands =
                {
                    new Npgsql.NpgsqlBatchCommand(MetadataRows.BoardEntries) { Parameters = { new("a", account), new("me", exceptOwner), new("now", now) } },
                    new Npgsql.NpgsqlBatchCommand(MetadataRows.BoardWaiting) { Parameters = { new("me", exceptOwner), new("now", now) } },
                },
            };
            using var reader = await batch.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var published = new List<PublishedEntry>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                published.Add(MetadataRows.ReadBoardEntry(reader));
            }

            await reader.NextResultAsync(cancellationToken).ConfigureAwait(false);
            await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            return new BoardView((int)reader.GetInt64(0), published);
        }, cancellationToken);

    public Task<IReadOnlyList<(string Owner, string Farm)>> ReadFarmsAsync(string exceptOwner, long now, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<(string Owner, string Farm)>>(async connection =>
        {
            using var farms = Command(connection, MetadataRows.BoardFarms, null, ("me", exceptOwner), ("now", now));
            return await ReadAllAsync(farms, r => (r.GetString(0), r.GetString(1)), cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task AskCancelAsync(string owner, long account, long? buildId, string? drvPath, long now, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var ask = Command(connection, MetadataRows.AskCancel, transaction, ("o", owner), ("a", account), ("b", buildId), ("d", drvPath), ("t", now));
            await ask.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    // Asked every second by every front door: one statement, without a transaction round its one round trip.
    public async Task<IReadOnlyList<BoardCancel>> TakeCancelsAsync(string owner, CancellationToken cancellationToken)
    {
        List<BoardCancel> taken = [];
        await WriteOneAsync(async connection =>
        {
            using var take = Command(connection, MetadataRows.TakeCancels, null, ("o", owner));
            taken = await ReadAllAsync(take, MetadataRows.ReadBoardCancel, cancellationToken).ConfigureAwait(false);
        }, cancellationToken).ConfigureAwait(false);
        return taken;
    }

    public Task ForgetLapsedAsync(long before, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            foreach (var statement in MetadataRows.ForgetLapsed)
            {
                using var forget = Command(connection, statement, transaction, ("t", before));
                await forget.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);
}
