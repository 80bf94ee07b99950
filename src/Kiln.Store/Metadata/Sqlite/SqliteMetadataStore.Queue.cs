namespace Kiln.Store.Metadata.Sqlite;

// IQueueBoard: one SQLite server has no other front door to show its queue to, but keeps the contract (its tests run
// on both providers).
public sealed partial class SqliteMetadataStore
{
    public Task PublishQueueAsync(string owner, IReadOnlyCollection<BoardEntry>? entries, int waiting, string? farm, long expires, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using (var board = Command(connection, MetadataRows.PublishBoard, transaction, ("@o", owner), ("@w", (long)waiting), ("@f", farm), ("@e", expires)))
            {
                await board.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }

            if (entries is null)
            {
                return;
            }

            using (var clear = Command(connection, "DELETE FROM queue_entries WHERE owner = @o", transaction, ("@o", owner)))
            {
                await clear.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }

            foreach (var entry in entries)
            {
                using var insert = Command(connection, "INSERT INTO queue_entries (owner, account, build_id, drv_path, state, position, agent) VALUES (@o, @a, @b, @d, @s, @p, @g)",
                    transaction, ("@o", owner), ("@a", entry.Account), ("@b", entry.BuildId), ("@d", entry.DrvPath), ("@s", entry.State), ("@p", (long?)entry.Position), ("@g", entry.Agent));
                await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);

    public Task<BoardView> ReadBoardAsync(long account, string exceptOwner, long now, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var entries = Command(connection, MetadataRows.BoardEntries, null, ("@a", account), ("@me", exceptOwner), ("@now", now));
            var published = await ReadAllAsync(entries, MetadataRows.ReadBoardEntry, cancellationToken).ConfigureAwait(false);
            using var waiting = Command(connection, MetadataRows.BoardWaiting, null, ("@me", exceptOwner), ("@now", now));
            var inLine = Convert.ToInt32(await waiting.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false), System.Globalization.CultureInfo.InvariantCulture);
            return new BoardView(inLine, published);
        }, cancellationToken);

    public Task<IReadOnlyList<(string Owner, string Farm)>> ReadFarmsAsync(string exceptOwner, long now, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<(string Owner, string Farm)>>(async connection =>
        {
            using var farms = Command(connection, MetadataRows.BoardFarms, null, ("@me", exceptOwner), ("@now", now));
            return await ReadAllAsync(farms, r => (r.GetString(0), r.GetString(1)), cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task AskCancelAsync(string owner, long account, long? buildId, string? drvPath, long now, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var ask = Command(connection, MetadataRows.AskCancel, transaction, ("@o", owner), ("@a", account), ("@b", buildId), ("@d", drvPath), ("@t", now));
            await ask.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<BoardCancel>> TakeCancelsAsync(string owner, CancellationToken cancellationToken) =>
        WriteAsync<IReadOnlyList<BoardCancel>>(async (connection, transaction) =>
        {
            using var take = Command(connection, MetadataRows.TakeCancels, transaction, ("@o", owner));
            return await ReadAllAsync(take, MetadataRows.ReadBoardCancel, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task ForgetLapsedAsync(long before, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            foreach (var statement in MetadataRows.ForgetLapsed)
            {
                using var forget = Command(connection, statement, transaction, ("@t", before));
                await forget.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);
}
