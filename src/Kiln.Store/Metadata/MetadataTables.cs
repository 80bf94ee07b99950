using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Kiln.Store.Metadata;

/// <summary>What a column holds, in the words both providers map to their own types.</summary>
public enum ColumnKind
{
    /// <summary>A 64-bit integer (SQLite INTEGER, PostgreSQL bigint); read as <see cref="long"/>.</summary>
    Number,

    /// <summary>Text; read as <see cref="string"/>.</summary>
    Text,

    /// <summary>Bytes (SQLite BLOB, PostgreSQL bytea); read as <c>byte[]</c>.</summary>
    Bytes,

    /// <summary>A flag (SQLite 0/1, PostgreSQL boolean); read as <see cref="bool"/>.</summary>
    Boolean,
}

/// <summary>A table of Kiln's metadata as copied whole: its columns, and whether its <c>id</c> is generated.</summary>
public sealed record MetadataTable(string Name, IReadOnlyList<(string Name, ColumnKind Kind)> Columns, bool HasIdentity = false);

/// <summary>
/// Kiln's metadata as whole tables, for moving an installation between providers (<c>kiln store migrate</c>): every
/// table that holds what an installation is — accounts, their views, credentials, builds, the service's secrets — in
/// an order in which each table's references are copied before it. Step claims are not here: a claim is a running
/// server's, and none runs while an installation moves. A contract test holds this list to both providers' schemas, so
/// a migration that adds a column without adding it here fails.
/// </summary>
public static class MetadataTables
{
    private const ColumnKind I = ColumnKind.Number, T = ColumnKind.Text, Y = ColumnKind.Bytes, B = ColumnKind.Boolean;

    public static IReadOnlyList<MetadataTable> All { get; } =
    [
        new("accounts", [("id", I), ("name", T), ("created", I), ("public_cache", B), ("substituters", T), ("trusted_public_keys", T), ("netrc", T)], HasIdentity: true),
        new("paths", [("id", I), ("account_id", I), ("path", T), ("hash_part", T), ("nar_hash", Y), ("nar_size", I), ("deriver", T), ("ca", T),
            ("registration_time", I), ("ultimate", B), ("self_reference", B), ("provenance", T), ("trust", T), ("last_used", I)], HasIdentity: true),
        new("refs", [("referrer", I), ("reference", I)]),
        new("sigs", [("path_id", I), ("sig", T)]),
        new("drv_outputs", [("drv_id", I), ("output", T), ("path", T)]),
        new("roots", [("id", I), ("account_id", I), ("kind", T), ("name", T), ("path", T), ("created", I)], HasIdentity: true),
        new("builds", [("id", I), ("step_key", T), ("drv_path", T), ("account_id", I), ("status", T), ("failure", T), ("error", T), ("started", I),
            ("stopped", I), ("cpu_user_us", I), ("cpu_system_us", I), ("peak_memory", I), ("outputs", T), ("agent", T), ("pname", T), ("attempts", I), ("ran_from", I)], HasIdentity: true),
        new("build_accounts", [("build_id", I), ("account_id", I)]),
        new("settings", [("account_id", I), ("scope", T), ("name", T), ("value", T), ("final", B)]),
        new("storage_samples", [("account_id", I), ("day", I), ("paths", I), ("nar_bytes", I)]),
        new("transfers", [("account_id", I), ("day", I), ("uploaded", I), ("downloaded", I)]),
        new("build_tags", [("build_id", I), ("account_id", I), ("name", T), ("value", T)]),
        new("pushes", [("id", I), ("account_id", I), ("build_id", I), ("target", T), ("paths", T), ("state", T), ("attempts", I), ("next_attempt", I),
            ("uploaded", I), ("error", T), ("created", I), ("finished", I)], HasIdentity: true),
        new("ssh_keys", [("id", I), ("account_id", I), ("key_type", T), ("key_blob", T), ("fingerprint", T), ("comment", T), ("permissions", T),
            ("enabled", B), ("created", I)], HasIdentity: true),
        new("tokens", [("id", I), ("account_id", I), ("token_hash", T), ("description", T), ("permissions", T), ("expires", I), ("revoked", I),
            ("created", I)], HasIdentity: true),
        new("signing_keys", [("account_id", I), ("secret", T), ("created", I)]),
        new("nar_files", [("file", T), ("nar_hash", Y), ("compression", T), ("file_size", I), ("created", I)]),
        new("server_secrets", [("name", T), ("secret", T), ("created", I)]),
        new("agent_tokens", [("id", I), ("name", T), ("token_hash", T), ("created", I), ("revoked", I)], HasIdentity: true),
        new("builders", [("name", T), ("uri", T), ("systems", T), ("features", T), ("max_jobs", I), ("ssh_key", T), ("host_key", T), ("created", I)]),
    ];

    /// <summary>Tables a provider has that are not copied: its own bookkeeping, claims of running servers, and the state of the agents connected to them.</summary>
    public static IReadOnlySet<string> NotCopied { get; } = new HashSet<string>(StringComparer.Ordinal) { "schema_migrations", "step_claims", "agents", "temp_roots", "temp_root_doors", "sweep_turns", "queue_boards", "queue_entries", "queue_cancels" };

    /// <summary>The SQL list of a table's columns, in <see cref="MetadataTable.Columns"/> order.</summary>
    internal static string ColumnList(MetadataTable table) => string.Join(", ", table.Columns.Select(c => c.Name));

    /// <summary>
    /// Every row of <paramref name="table"/> through <paramref name="connection"/> (opened, and disposed here), streamed
    /// as both providers' readers stream them: a table of millions of paths is never in memory at once.
    /// </summary>
    internal static async IAsyncEnumerable<object?[]> ReadRowsAsync(System.Data.Common.DbConnection connection, MetadataTable table,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await using (connection.ConfigureAwait(false))
        {
            using var command = connection.CreateCommand();
            command.CommandText = $"SELECT {ColumnList(table)} FROM {table.Name}";
            var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            await using (reader.ConfigureAwait(false))
            {
                while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
                {
                    yield return ReadRow(reader, table);
                }
            }
        }
    }

    /// <summary>A row as <see cref="IMetadataTables.ReadTableAsync"/> gives it, from a <c>SELECT</c> of <see cref="ColumnList"/>.</summary>
    private static object?[] ReadRow(System.Data.Common.DbDataReader reader, MetadataTable table)
    {
        var row = new object?[table.Columns.Count];
        for (var i = 0; i < row.Length; i++)
        {
            // SQLite has no boolean: a flag is stored as 0 or 1.
            row[i] = reader.IsDBNull(i) ? null
                : reader.GetValue(i) is long flag && table.Columns[i].Kind == ColumnKind.Boolean ? flag != 0
                : reader.GetValue(i);
        }

        return row;
    }
}

/// <summary>
/// A digest of a table's rows that does not depend on their order (providers sort text differently): the count, and
/// the sum of each row's SHA-256 (taken as two 64-bit numbers, wrapping). Two tables with the same digest hold the
/// same rows; a row missing, extra, or with one value changed moves it.
/// </summary>
public readonly record struct TableDigest(long Rows, ulong SumHigh, ulong SumLow)
{
    /// <summary>The digest of every row <paramref name="rows"/> yields, as <see cref="IMetadataTables.ReadTableAsync"/> gives them.</summary>
    public static async Task<TableDigest> OfAsync(MetadataTable table, IAsyncEnumerable<object?[]> rows, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(rows);
        long count = 0;
        ulong high = 0, low = 0;
        var buffer = new List<byte>(256);
        var hash = new byte[32];
        await foreach (var row in rows.WithCancellation(cancellationToken).ConfigureAwait(false))
        {
            buffer.Clear();
            for (var i = 0; i < table.Columns.Count; i++)
            {
                Append(buffer, row[i]);
            }

            SHA256.HashData(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(buffer), hash);
            high += BinaryPrimitives.ReadUInt64BigEndian(hash);
            low += BinaryPrimitives.ReadUInt64BigEndian(hash.AsSpan(8));
            count++;
        }

        return new TableDigest(count, high, low);
    }

    // Each value tagged with its type and, when it has one, its length: (null), ("a", "bc") and ("ab", "c") differ.
    private static void Append(List<byte> buffer, object? value)
    {
        switch (value)
        {
            case null or DBNull:
                buffer.Add(0);
                return;
            case long integer:
                buffer.Add(1);
                AppendNumber(buffer, integer);
                return;
            case bool flag:
                buffer.Add(flag ? (byte)2 : (byte)3);
                return;
            case string text:
                AppendBytes(buffer, 4, Encoding.UTF8.GetBytes(text));
                return;
            case byte[] bytes:
                AppendBytes(buffer, 5, bytes);
                return;
            default:
                throw new InvalidOperationException($"a metadata value of type {value.GetType().Name} has no digest");
        }
    }

    private static void AppendBytes(List<byte> buffer, byte tag, byte[] bytes)
    {
        buffer.Add(tag);
        AppendNumber(buffer, bytes.Length);
        buffer.AddRange(bytes);
    }

    private static void AppendNumber(List<byte> buffer, long number)
    {
        for (var shift = 56; shift >= 0; shift -= 8)
        {
            buffer.Add((byte)(number >> shift));
        }
    }
}

/// <summary>
/// Whole tables in and out of a provider (<see cref="MetadataTables"/>), for <c>kiln store migrate</c>: rows as arrays
/// of <see cref="long"/>, <see cref="string"/>, <c>byte[]</c>, <see cref="bool"/> or null, in the table's
/// column order, the same whichever provider they come from.
/// </summary>
public interface IMetadataTables
{
    /// <summary>Every row of <paramref name="table"/>, streamed (in no particular order).</summary>
    IAsyncEnumerable<object?[]> ReadTableAsync(MetadataTable table, CancellationToken cancellationToken);

    /// <summary>Adds rows, ids included, in one transaction; a row whose key is there already is skipped (a copy resumed). Returns how many were added.</summary>
    Task<int> AddRowsAsync(MetadataTable table, IReadOnlyList<object?[]> rows, CancellationToken cancellationToken);

    /// <summary>After rows were added with their ids: ids the provider generates from now on follow the largest copied.</summary>
    Task FinishAddingRowsAsync(CancellationToken cancellationToken);
}
