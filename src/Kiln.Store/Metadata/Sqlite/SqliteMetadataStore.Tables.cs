using System.Runtime.CompilerServices;

namespace Kiln.Store.Metadata.Sqlite;

/// <summary>Whole tables in and out (<see cref="IMetadataTables"/>, for <c>kiln store migrate</c>).</summary>
public sealed partial class SqliteMetadataStore
{
    public async IAsyncEnumerable<object?[]> ReadTableAsync(MetadataTable table, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(table);
        var connection = await OpenAsync(cancellationToken).ConfigureAwait(false);
        await foreach (var row in MetadataTables.ReadRowsAsync(connection, table, cancellationToken).ConfigureAwait(false))
        {
            yield return row;
        }
    }

    public Task<int> AddRowsAsync(MetadataTable table, IReadOnlyList<object?[]> rows, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(rows);
        return WriteAsync(async (connection, transaction) =>
        {
            var names = table.Columns.Select((_, i) => "$c" + i).ToList();
            using var insert = Command(connection, $"INSERT OR IGNORE INTO {table.Name} ({MetadataTables.ColumnList(table)}) VALUES ({string.Join(", ", names)})", transaction);
            foreach (var name in names)
            {
                insert.Parameters.Add(new Microsoft.Data.Sqlite.SqliteParameter { ParameterName = name });
            }

            await insert.PrepareAsync(cancellationToken).ConfigureAwait(false);
            var added = 0;
            foreach (var row in rows)
            {
                for (var i = 0; i < names.Count; i++)
                {
                    insert.Parameters[i].Value = row[i] switch
                    {
                        null => DBNull.Value,
                        bool flag => flag ? 1L : 0L,
                        var value => value,
                    };
                }

                added += await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }

            return added;
        }, cancellationToken);
    }

    // A rowid table's next id is always past its largest.
    public Task FinishAddingRowsAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
