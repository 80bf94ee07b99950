using System.Runtime.CompilerServices;
using Npgsql;
using NpgsqlTypes;

namespace Kiln.Store.Metadata.Postgres;

/// <summary>Whole tables in and out (<see cref="IMetadataTables"/>, for <c>kiln store migrate</c>).</summary>
public sealed partial class PostgresMetadataStore
{
    public async IAsyncEnumerable<object?[]> ReadTableAsync(MetadataTable table, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(table);
        var connection = await _warm.OpenAsync(cancellationToken).ConfigureAwait(false);
        await foreach (var row in MetadataTables.ReadRowsAsync(connection, table, cancellationToken).ConfigureAwait(false))
        {
            yield return row;
        }
    }

    public Task<int> AddRowsAsync(MetadataTable table, IReadOnlyList<object?[]> rows, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(rows);
        if (rows.Count == 0)
        {
            return Task.FromResult(0);
        }

        return WriteAsync(async (connection, transaction) =>
        {
            // One statement for the whole batch: a typed array per column, zipped back into rows by unnest.
            using var insert = new NpgsqlCommand { Connection = connection, Transaction = transaction };
            var arrays = new List<string>();
            for (var i = 0; i < table.Columns.Count; i++)
            {
                var column = i;
                var (type, values) = table.Columns[i].Kind switch
                {
                    ColumnKind.Number => (NpgsqlDbType.Bigint, (object)rows.Select(r => (long?)r[column]).ToArray()),
                    ColumnKind.Text => (NpgsqlDbType.Text, rows.Select(r => (string?)r[column]).ToArray()),
                    ColumnKind.Bytes => (NpgsqlDbType.Bytea, rows.Select(r => (byte[]?)r[column]).ToArray()),
                    _ => (NpgsqlDbType.Boolean, rows.Select(r => (bool?)r[column]).ToArray()),
                };
                insert.Parameters.Add(new NpgsqlParameter("c" + i, NpgsqlDbType.Array | type) { Value = values });
                arrays.Add("@c" + i);
            }

            insert.CommandText = $"INSERT INTO {table.Name} ({MetadataTables.ColumnList(table)}) SELECT * FROM unnest({string.Join(", ", arrays)}) ON CONFLICT DO NOTHING";
            return await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }

    public Task FinishAddingRowsAsync(CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // Rows copied with their ids leave each identity's sequence where it was: the next account or path made
            // would take an id that is taken.
            foreach (var table in MetadataTables.All.Where(t => t.HasIdentity))
            {
                using var advance = Command(connection,
                    $"SELECT setval(pg_get_serial_sequence('{table.Name}', 'id'), COALESCE((SELECT max(id) FROM {table.Name}), 0) + 1, false)", transaction);
                await advance.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);
}
