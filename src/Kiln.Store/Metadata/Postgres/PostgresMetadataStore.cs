using Npgsql;

namespace Kiln.Store.Metadata.Postgres;

/// <summary>
/// <see cref="IMetadataStore"/> on PostgreSQL, for Kiln as several front doors on one database. Every connection comes
/// from one pooled <see cref="NpgsqlDataSource"/>; statements used again are prepared automatically per connection.
/// Lists of paths, hashes and accounts travel as one array parameter expanded by <c>unnest</c>, so a query for
/// 10,000 paths is one round trip. Writes are ordinary transactions: PostgreSQL serialises what conflicts (unique keys,
/// foreign keys), so there is no process-wide write lock as SQLite needs. The "records changed" version is shared
/// between processes with LISTEN/NOTIFY (<see cref="PathRecordsVersion"/>).
/// </summary>
public sealed partial class PostgresMetadataStore : IMetadataStore
{
    private const string Channel = "kiln_path_records";

    private readonly NpgsqlDataSource _source;
    private readonly NpgsqlDataSource _unpooled; // sessions of their own: LISTEN, the collection lock
    private readonly WarmConnections _warm;

    // Open connections kept for the next statement (WarmConnections): enough for the statements of a few clients in
    // turn; bursts take more from the pool.
    private const int WarmConnectionsKept = 4;
    private readonly bool _readOnly;
    private readonly CancellationTokenSource _stopping = new();
    private Task? _listener;
    private readonly Lock _listenerLock = new();

    /// <param name="connectionString">An Npgsql connection string (see <see cref="PostgresConnection.Parse(string, Func{string, string?})"/> for the URL forms).</param>
    /// <param name="readOnly">Only read (sshd's key lookups): every transaction is read-only, and nothing listens.</param>
    public PostgresMetadataStore(string connectionString, bool readOnly = false)
    {
        var builder = Settings(connectionString, readOnly);
        _readOnly = readOnly;
        _source = Source(builder.ConnectionString);
        _unpooled = Source(new NpgsqlConnectionStringBuilder(builder.ConnectionString) { Pooling = false, KeepAlive = 5 }.ConnectionString);
        _warm = new WarmConnections(_source, Math.Clamp(builder.MaxPoolSize - 1, 0, WarmConnectionsKept));
    }

    /// <summary>
    /// A data source with the types Kiln's statements use (integers, text, booleans, bytea, and arrays of them for the
    /// many-path queries) and every way of reaching a server the full one has (TLS, Kerberos), not Npgsql's every type
    /// mapping (ranges, JSON, geometry, network, full text): the native kiln, which opens the metadata for <c>kiln key
    /// list</c>, compiles all it can reach and loads all of it at every start (a quarter less of Npgsql's code).
    /// </summary>
    internal static NpgsqlDataSource Source(string connectionString)
    {
        var builder = new NpgsqlSlimDataSourceBuilder(connectionString);
        builder.EnableArrays();
        builder.EnableTransportSecurity();
        builder.EnableIntegratedSecurity();
        return builder.Build();
    }

    /// <summary>The connection settings Kiln runs with: the operator's, with Kiln's defaults where they said nothing.</summary>
    internal static NpgsqlConnectionStringBuilder Settings(string connectionString, bool readOnly)
    {
        var builder = new NpgsqlConnectionStringBuilder(connectionString);
        // What the operator's connection string says explicitly is kept: NpgsqlConnectionStringBuilder.ContainsKey is
        // true of every keyword it knows, set or not, so what was given is read from a plain builder.
        var given = new System.Data.Common.DbConnectionStringBuilder { ConnectionString = connectionString };
        bool Given(params string[] keywords) => keywords.Any(given.ContainsKey);
        if (!Given("Max Auto Prepare", "MaxAutoPrepare"))
        {
            // The hot statements (path records, narinfo lookups) are prepared on each connection after two uses:
            // parsing and planning them again each time costs more than running them.
            builder.MaxAutoPrepare = 64;
            builder.AutoPrepareMinUsages = 2;
        }

        if (!Given("No Reset On Close", "NoResetOnClose"))
        {
            // Kiln leaves no state on a pooled connection's session (LISTEN has a connection of its own; the collection
            // lock is released before its connection goes back), so the DISCARD ALL Npgsql would send each time a
            // connection goes back to the pool — a round trip — is only a cost.
            builder.NoResetOnClose = true;
        }

        if (readOnly)
        {
            builder.Options = ((builder.Options ?? "") + " -c default_transaction_read_only=on").Trim();
        }

        return builder;
    }

    /// <summary>The database's failures that are the storage's, not Kiln's logic, as the IOException every front door reports as a storage failure.</summary>
    private static IOException? AsStorageFailure(NpgsqlException e, string what)
    {
        // SQLSTATE classes: 08 connection, 53 insufficient resources (53100 disk full), 57 operator intervention
        // (the server shutting down), 58 system errors (I/O); 25006 a read-only transaction was asked to write.
        var state = (e as PostgresException)?.SqlState;
        var errno = state switch
        {
            null => 5, // no answer from the server at all (refused, reset, timed out): EIO
            "53100" => 28, // ENOSPC
            "25006" => 30, // EROFS
            _ when state.StartsWith("08", StringComparison.Ordinal) || state.StartsWith("53", StringComparison.Ordinal)
                || state.StartsWith("57", StringComparison.Ordinal) || state.StartsWith("58", StringComparison.Ordinal) => 5,
            _ => 0,
        };
        return errno == 0 ? null : new IOException($"the metadata database could not be {what}: {e.Message}", e) { HResult = errno };
    }

    private Task<T> ReadAsync<T>(Func<NpgsqlConnection, Task<T>> work, CancellationToken cancellationToken) =>
        OnConnectionAsync(work, "read", cancellationToken);

    private Task<T> WriteAsync<T>(Func<NpgsqlConnection, NpgsqlTransaction, Task<T>> work, CancellationToken cancellationToken) =>
        OnConnectionAsync(async connection =>
        {
            // Asked for, not left to the server's default: what the statements' comments reason about (each statement sees
            // what committed before it began; a row lock waited for is then read as committed) holds whatever it is.
            var transaction = await connection.BeginTransactionAsync(System.Data.IsolationLevel.ReadCommitted, cancellationToken).ConfigureAwait(false);
            await using (transaction.ConfigureAwait(false))
            {
                var result = await work(connection, transaction).ConfigureAwait(false);
                await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
                return result;
            }
        }, "written", cancellationToken);

    // One statement, atomic on its own: no transaction around it, so one round trip instead of two (its COMMIT) — when
    // the database's default isolation is READ COMMITTED, what the statements' comments reason about (asked once). On a
    // database whose default is stricter, it gets a READ COMMITTED transaction of its own as WriteAsync gives. (Not a
    // startup option forcing it: that would replace an operator's PGOPTIONS, and PgBouncer refuses unknown ones.)
    private async Task<T> WriteOneAsync<T>(Func<NpgsqlConnection, Task<T>> statement, CancellationToken cancellationToken) =>
        await ImplicitlyReadCommittedAsync(cancellationToken).ConfigureAwait(false)
            ? await OnConnectionAsync(statement, "written", cancellationToken).ConfigureAwait(false)
            : await WriteAsync((connection, _) => statement(connection), cancellationToken).ConfigureAwait(false);

    // Runs work on a warm connection, given back kept only if the work succeeded (WarmConnections.ReturnAsync); the
    // database's failures that are the storage's become the IOException front doors report ("could not be <what>").
    private async Task<T> OnConnectionAsync<T>(Func<NpgsqlConnection, Task<T>> work, string what, CancellationToken cancellationToken)
    {
        try
        {
            var lease = await _warm.RentAsync(cancellationToken).ConfigureAwait(false);
            var clean = false;
            try
            {
                var result = await work(lease.Connection).ConfigureAwait(false);
                clean = true;
                return result;
            }
            finally
            {
                await _warm.ReturnAsync(lease, clean).ConfigureAwait(false);
            }
        }
        catch (NpgsqlException e) when (AsStorageFailure(e, what) is { } failure)
        {
            throw failure;
        }
    }

    private Task<bool>? _implicitlyReadCommitted;

    /// <summary>Whether a statement sent without a transaction runs READ COMMITTED here (the database's default isolation).</summary>
    internal async Task<bool> ImplicitlyReadCommittedAsync(CancellationToken cancellationToken)
    {
        var asked = _implicitlyReadCommitted ??= ReadAsync(async connection =>
        {
            using var show = Command(connection, "SELECT current_setting('default_transaction_isolation')");
            return await show.ExecuteScalarAsync(CancellationToken.None).ConfigureAwait(false) as string == "read committed";
        }, CancellationToken.None);
        try
        {
            return await asked.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception) when (!cancellationToken.IsCancellationRequested)
        {
            _implicitlyReadCommitted = null; // asked again next time
            throw;
        }
    }

    private async Task WriteOneAsync(Func<NpgsqlConnection, Task> statement, CancellationToken cancellationToken) =>
        await WriteOneAsync<bool>(async connection =>
        {
            await statement(connection).ConfigureAwait(false);
            return true;
        }, cancellationToken).ConfigureAwait(false);

    private Task<bool> WriteAsync(Func<NpgsqlConnection, NpgsqlTransaction, Task> work, CancellationToken cancellationToken) =>
        WriteAsync<bool>(async (c, t) =>
        {
            await work(c, t).ConfigureAwait(false);
            return true;
        }, cancellationToken);

    private static NpgsqlCommand Command(NpgsqlConnection connection, string sql, NpgsqlTransaction? transaction = null, params (string Name, object? Value)[] parameters)
    {
        var command = new NpgsqlCommand(sql, connection, transaction);
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value ?? DBNull.Value);
        }

        return command;
    }

    private static async Task<List<T>> ReadAllAsync<T>(NpgsqlCommand command, Func<NpgsqlDataReader, T> read, CancellationToken cancellationToken)
    {
        var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        await using (reader.ConfigureAwait(false))
        {
            var result = new List<T>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                result.Add(read(reader));
            }

            return result;
        }
    }

    private static async Task<T?> ReadOneAsync<T>(NpgsqlCommand command, Func<NpgsqlDataReader, T> read, CancellationToken cancellationToken)
        where T : class
    {
        var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        await using (reader.ConfigureAwait(false))
        {
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? read(reader) : null;
        }
    }

    // A fixed key for pg_advisory_lock: every Kiln process migrating this database waits for the one that is.
    private const long MigrationLock = 0x4b696c6e_4d696772; // "KilnMigr"

    public async Task MigrateAsync(CancellationToken cancellationToken)
    {
        await ReadAsync(async connection =>
        {
            // Several front doors starting at once: the first takes the lock and migrates, the others wait for it and
            // then find every migration applied. A session lock, so it also covers reading the applied list.
            using (var lockCommand = Command(connection, "SELECT pg_advisory_lock(@k)", null, ("k", MigrationLock)))
            {
                await lockCommand.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }

            try
            {
                using (var create = Command(connection, "CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY, applied bigint NOT NULL)"))
                {
                    await create.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                }

                HashSet<long> applied;
                using (var query = Command(connection, "SELECT version FROM schema_migrations"))
                {
                    applied = [.. await ReadAllAsync(query, r => r.GetInt64(0), cancellationToken).ConfigureAwait(false)];
                }

                foreach (var (version, readSql) in MetadataRows.Migrations("Kiln.Store.Postgres."))
                {
                    if (applied.Contains(version))
                    {
                        continue;
                    }

                    // PostgreSQL's DDL is transactional: a migration and its record commit together or not at all.
                    var transaction = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
                    await using (transaction.ConfigureAwait(false))
                    {
                        using (var migrate = Command(connection, readSql(), transaction))
                        {
                            await migrate.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                        }

                        using (var record = Command(connection, "INSERT INTO schema_migrations (version, applied) VALUES (@v, @t)", transaction,
                            ("v", version), ("t", MetadataRows.Now())))
                        {
                            await record.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                        }

                        await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
                    }
                }
            }
            finally
            {
                using var unlock = Command(connection, "SELECT pg_advisory_unlock(@k)", null, ("k", MigrationLock));
                await unlock.ExecuteNonQueryAsync(CancellationToken.None).ConfigureAwait(false);
            }

            return true;
        }, cancellationToken).ConfigureAwait(false);

        // A server opens its metadata by migrating it: from then on it hears other front doors' changes.
        await StartListening().WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await _stopping.CancelAsync().ConfigureAwait(false);
        if (_listener is { } listener)
        {
            try
            {
                await listener.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }

        await CloseLockSessionAsync().ConfigureAwait(false);
        await _warm.DisposeAsync().ConfigureAwait(false);
        await _source.DisposeAsync().ConfigureAwait(false);
        await _unpooled.DisposeAsync().ConfigureAwait(false);
        _stopping.Dispose();
        _lockSession.Dispose();
    }
}
