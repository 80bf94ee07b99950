using System.Collections.Concurrent;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Microsoft.Data.Sqlite;

namespace Kiln.Store.Metadata.Sqlite;

/// <summary>
/// <see cref="IMetadataStore"/> on SQLite in WAL mode: many concurrent readers, one writer at a time (writes also
/// take an in-process lock, so they queue here rather than spin on SQLITE_BUSY). Lists of paths travel as one JSON
/// array parameter expanded by <c>json_each</c>, so a query for 10,000 paths is one statement. Such queries say
/// <c>json_each(…) CROSS JOIN paths</c>: SQLite keeps that order, looking each path up by its index, where a plain
/// join may scan an account's whole view once per query.
/// </summary>
public sealed partial class SqliteMetadataStore : IMetadataStore
{
    private readonly string _connectionString;
    private readonly string _databasePath;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly System.Runtime.CompilerServices.ConditionalWeakTable<object, object> _configured = new();

    /// <param name="databasePath">The database file.</param>
    /// <param name="readOnly">Open an existing database for reading only (sshd's key lookups: they must never write).</param>
    public SqliteMetadataStore(string databasePath, bool readOnly = false)
    {
        _databasePath = databasePath;
        _connectionString = new SqliteConnectionStringBuilder
        {
            DataSource = databasePath,
            Mode = readOnly ? SqliteOpenMode.ReadOnly : SqliteOpenMode.ReadWriteCreate,
            Pooling = true,
            DefaultTimeout = 30,
        }.ToString();
    }

    private async Task<SqliteConnection> OpenAsync(CancellationToken cancellationToken)
    {
        var connection = new SqliteConnection(_connectionString);
        try
        {
            await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (SqliteException e) when (AsStorageFailure(e, "opened") is { } failure)
        {
            // Every reader and writer opens here: the file gone or its directory unreachable is a storage failure.
            await connection.DisposeAsync().ConfigureAwait(false);
            throw failure;
        }

        // The settings belong to the underlying database connection, which the pool hands out again and again:
        // set them once per connection, not on every open (a lookup is a fraction of a millisecond; this is not).
        if (connection.Handle is { } handle && !_configured.TryGetValue(handle, out _))
        {
            using var pragma = connection.CreateCommand();
            pragma.CommandText = "PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 30000;";
            await pragma.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            _configured.AddOrUpdate(handle, handle);
        }

        return connection;
    }

    private async Task<T> WriteAsync<T>(Func<SqliteConnection, SqliteTransaction, Task<T>> work, CancellationToken cancellationToken)
    {
        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var connection = await OpenAsync(cancellationToken).ConfigureAwait(false);
            await using (connection.ConfigureAwait(false))
            {
                // BEGIN IMMEDIATE: take the write lock now, not at the first write inside the transaction.
                var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(System.Data.IsolationLevel.Serializable, cancellationToken).ConfigureAwait(false);
                await using (transaction.ConfigureAwait(false))
                {
                    var result = await work(connection, transaction).ConfigureAwait(false);
                    await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
                    return result;
                }
            }
        }
        catch (SqliteException e) when (AsStorageFailure(e, "written") is { } failure)
        {
            // As the blob and log stores' own failures are: the disk, not Kiln's logic (the transaction rolled back).
            throw failure;
        }
        finally
        {
            _writeLock.Release();
        }
    }

    private const int SqliteReadOnly = 8, SqliteIoError = 10, SqliteFull = 13, SqliteCantOpen = 14;

    // The database's file system failing (full, read-only, I/O errors, the file gone or unreadable) as the IOException
    // with the errno the other stores' failures carry, which every front door reports as a storage failure; null for
    // anything else (a constraint, a bug), which stays an internal error.
    private static IOException? AsStorageFailure(SqliteException e, string what) => e.SqliteErrorCode switch
    {
        SqliteFull => Failure(e, what, 28), // ENOSPC
        SqliteReadOnly => Failure(e, what, 30), // EROFS
        SqliteIoError or SqliteCantOpen => Failure(e, what, 5), // EIO
        _ => null,
    };

    // SQLite's exception stays inside, for the operator's log (its extended code and stack).
    private static IOException Failure(SqliteException e, string what, int errno) =>
        new($"the metadata database could not be {what}: {e.Message}", e) { HResult = errno };

    private Task<bool> WriteAsync(Func<SqliteConnection, SqliteTransaction, Task> work, CancellationToken cancellationToken) =>
        WriteAsync<bool>(async (c, t) =>
        {
            await work(c, t).ConfigureAwait(false);
            return true;
        }, cancellationToken);

    /// <summary>A read-only statement kept prepared on each pooled connection, with its parameter names.</summary>
    /// <remarks>
    /// A class, not a record: each is one static instance, and a connection finds its command by that instance. A
    /// record's equality would hash the whole SQL text at every lookup (measured: 2% of a narinfo's first lookup).
    /// </remarks>
    private sealed class PreparedQuery(string sql, params string[] parameters)
    {
        public string Sql { get; } = sql;

        public IReadOnlyList<string> Parameters { get; } = parameters;
    }

    /// <summary>An open connection of Kiln's own, with the statements prepared on it so far.</summary>
    private sealed class PreparedConnection(SqliteConnection connection)
    {
        private readonly Dictionary<PreparedQuery, SqliteCommand> _commands = [];

        public SqliteConnection Connection => connection;

        public SqliteCommand For(PreparedQuery query)
        {
            if (!_commands.TryGetValue(query, out var command))
            {
                command = connection.CreateCommand();
                command.CommandText = query.Sql;
                foreach (var name in query.Parameters)
                {
                    command.Parameters.Add(new SqliteParameter { ParameterName = name });
                }

                command.Prepare();
                _commands[query] = command;
            }

            return command;
        }
    }

    // Connections for prepared statements: preparing the path query costs more than running it. Bounded, since each
    // holds a database connection; a read beyond the bound opens one of its own.
    private readonly ConcurrentBag<PreparedConnection> _prepared = [];
    private const int MaxPreparedConnections = 16;

    private async Task<T> ReadPreparedAsync<T>(PreparedQuery query, Func<SqliteCommand, Task<T>> work, CancellationToken cancellationToken)
    {
        if (!_prepared.TryTake(out var connection))
        {
            connection = new PreparedConnection(await OpenAsync(cancellationToken).ConfigureAwait(false));
        }

        var healthy = false;
        try
        {
            var result = await work(connection.For(query)).ConfigureAwait(false);
            healthy = true;
            return result;
        }
        catch (SqliteException e) when (AsStorageFailure(e, "read") is { } failure)
        {
            throw failure;
        }
        finally
        {
            if (healthy && _prepared.Count < MaxPreparedConnections)
            {
                _prepared.Add(connection);
            }
            else
            {
                await connection.Connection.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private async Task<T> ReadAsync<T>(Func<SqliteConnection, Task<T>> work, CancellationToken cancellationToken)
    {
        var connection = await OpenAsync(cancellationToken).ConfigureAwait(false);
        await using (connection.ConfigureAwait(false))
        {
            try
            {
                return await work(connection).ConfigureAwait(false);
            }
            catch (SqliteException e) when (AsStorageFailure(e, "read") is { } failure)
            {
                throw failure;
            }
        }
    }

    // Every row a query gives, each made by read.
    private static async Task<List<T>> ReadAllAsync<T>(SqliteCommand command, Func<SqliteDataReader, T> read, CancellationToken cancellationToken)
    {
        using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        var rows = new List<T>();
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            rows.Add(read(reader));
        }

        return rows;
    }

    private static SqliteCommand Command(SqliteConnection connection, string sql, SqliteTransaction? transaction = null, params (string Name, object? Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.CommandText = sql;
        command.Transaction = transaction;
        foreach (var (name, value) in parameters)
        {
            command.Parameters.AddWithValue(name, value ?? DBNull.Value);
        }

        return command;
    }

    public async Task MigrateAsync(CancellationToken cancellationToken)
    {
        var connection = await OpenAsync(cancellationToken).ConfigureAwait(false);
        await using (connection.ConfigureAwait(false))
        {
            // The database holds account signing keys and upstream credentials: Kiln's alone (SQLite gives its WAL
            // and shared-memory files the database file's mode).
            foreach (var file in new[] { _databasePath, _databasePath + "-wal", _databasePath + "-shm" }.Where(File.Exists))
            {
                File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            }

            using (var wal = Command(connection, "PRAGMA journal_mode = WAL;"))
            {
                await wal.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }

            using (var create = Command(connection, "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied INTEGER NOT NULL)"))
            {
                await create.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }

            var applied = new HashSet<long>();
            using (var query = Command(connection, "SELECT version FROM schema_migrations"))
            using (var reader = await query.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false))
            {
                while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
                {
                    applied.Add(reader.GetInt64(0));
                }
            }

            foreach (var (version, readSql) in MetadataRows.Migrations("Kiln.Store.Sqlite."))
            {
                if (applied.Contains(version))
                {
                    continue;
                }

                // BEGIN IMMEDIATE, and look again inside: another process (kiln serve starting while a kiln account
                // command runs) may have applied this migration since the list above was read.
                var transaction = (SqliteTransaction)await connection.BeginTransactionAsync(System.Data.IsolationLevel.Serializable, cancellationToken).ConfigureAwait(false);
                await using (transaction.ConfigureAwait(false))
                {
                    using (var check = Command(connection, "SELECT 1 FROM schema_migrations WHERE version = $v", transaction, ("$v", version)))
                    {
                        if (await check.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not null)
                        {
                            continue;
                        }
                    }

                    using (var migrate = Command(connection, readSql(), transaction))
                    {
                        await migrate.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                    }

                    using (var record = Command(connection, "INSERT INTO schema_migrations (version, applied) VALUES ($v, $t)", transaction, ("$v", version), ("$t", MetadataRows.Now())))
                    {
                        await record.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                    }

                    await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
                }
            }
        }
    }

    public async Task<long> GetOrCreateAccountAsync(string name, CancellationToken cancellationToken)
    {
        // Every session starts here: an account that exists costs a read, not a write transaction.
        var existing = await ReadAsync(async connection =>
        {
            using var select = Command(connection, "SELECT id FROM accounts WHERE name = $n", null, ("$n", name));
            return await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken).ConfigureAwait(false);
        return existing is long id ? id : await CreateAccountAsync(name, cancellationToken).ConfigureAwait(false);
    }

    private Task<long> CreateAccountAsync(string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, "INSERT INTO accounts (name, created) VALUES ($n, $t) ON CONFLICT (name) DO NOTHING", transaction, ("$n", name), ("$t", MetadataRows.Now()));
            await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            using var select = Command(connection, "SELECT id FROM accounts WHERE name = $n", transaction, ("$n", name));
            return (long)(await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }, cancellationToken);

    public Task<IReadOnlyList<AccountRecord>> ListAccountsAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<AccountRecord>>(async connection =>
        {
            using var command = Command(connection, "SELECT id, name FROM accounts ORDER BY id");
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var accounts = new List<AccountRecord>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                accounts.Add(new AccountRecord(reader.GetInt64(0), reader.GetString(1)));
            }

            return accounts;
        }, cancellationToken);

    // A property, not a field: the prepared queries built from it live in other parts of this class, whose static
    // fields may be initialised before this one.
    private static string PathColumns => MetadataRows.PathColumns("group_concat", "char(10)");

    private static readonly PreparedQuery PathsQuery = new($"""
        SELECT {PathColumns}
        FROM json_each($paths) j CROSS JOIN paths p ON p.account_id = $account AND p.path = j.value
        """, "$paths", "$account");

    public Task<IReadOnlyDictionary<StorePath, PathRecord>> GetPathsAsync(long account, IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        if (paths.Count == 0)
        {
            return Task.FromResult<IReadOnlyDictionary<StorePath, PathRecord>>(new Dictionary<StorePath, PathRecord>());
        }

        // The hottest query of all (every path info, every add of a known path): prepared once per connection.
        return ReadPreparedAsync<IReadOnlyDictionary<StorePath, PathRecord>>(PathsQuery, async command =>
        {
            command.Parameters["$paths"].Value = MetadataRows.JsonArray(paths.Select(p => p.BaseName));
            command.Parameters["$account"].Value = account;
            return await ReadRecordsAsync(command, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }

    private static async Task<IReadOnlyDictionary<StorePath, PathRecord>> ReadRecordsAsync(SqliteCommand command, CancellationToken cancellationToken)
    {
        using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        var result = new Dictionary<StorePath, PathRecord>();
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            var record = MetadataRows.ReadPath(reader);
            result[record.Info.Path] = record;
        }

        return result;
    }

    public Task<IReadOnlyDictionary<StorePath, PathRecord>> GetClosureAsync(long account, IReadOnlyCollection<StorePath> roots, CancellationToken cancellationToken) =>
        roots.Count == 0 ? Task.FromResult<IReadOnlyDictionary<StorePath, PathRecord>>(new Dictionary<StorePath, PathRecord>()) :
        ReadAsync(async connection =>
        {
            using var command = Command(connection, $"""
                WITH RECURSIVE closure(id) AS (
                    SELECT p.id FROM json_each($paths) j CROSS JOIN paths p ON p.account_id = $a AND p.path = j.value
                    UNION
                    SELECT r.reference FROM refs r JOIN closure c ON r.referrer = c.id)
                SELECT {PathColumns} FROM closure c CROSS JOIN paths p ON p.id = c.id WHERE p.account_id = $a
                """, null, ("$paths", MetadataRows.JsonArray(roots.Select(p => p.BaseName))), ("$a", account));
            return await ReadRecordsAsync(command, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<StorePath?> FindByHashPartAsync(long account, string hashPart, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, "SELECT path FROM paths WHERE account_id = $a AND hash_part = $h LIMIT 1", null, ("$a", account), ("$h", hashPart));
            var result = await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false);
            return result is string path ? StorePath.FromBaseName(path) : (StorePath?)null;
        }, cancellationToken);

    public Task<IReadOnlyList<StorePath>> GetAllPathsAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<StorePath>>(async connection =>
        {
            using var command = Command(connection, "SELECT path FROM paths WHERE account_id = $a ORDER BY path", null, ("$a", account));
            return await ReadPathsAsync(command, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    // One server process owns a SQLite database (the data directory's lock): its temp roots in memory are all there are.
    public bool SharesTempRoots => false;

    public Task PublishTempRootsAsync(string frontDoor, IReadOnlyCollection<TempRoot> roots, CancellationToken cancellationToken) =>
        Task.CompletedTask;

    public Task WithdrawTempRootsAsync(string frontDoor, long? session, CancellationToken cancellationToken) => Task.CompletedTask;

    public Task RenewTempRootsAsync(string frontDoor, TimeSpan lease, CancellationToken cancellationToken) => Task.CompletedTask;

    public Task<IReadOnlyList<StorePath>> GetTempRootsAsync(long account, string frontDoor, CancellationToken cancellationToken) =>
        Task.FromResult<IReadOnlyList<StorePath>>([]);

    public Task<StoreTotals> GetTotalsAsync(CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, "SELECT (SELECT COUNT(*) FROM paths), COUNT(*), COALESCE(SUM(size), 0) FROM (SELECT MAX(nar_size) AS size FROM paths GROUP BY nar_hash) AS nars");
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            return new StoreTotals(reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2));
        }, cancellationToken);

    public Task RecordStorageAsync(long day, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var command = Command(connection, MetadataRows.RecordStorage, transaction, ("@d", day));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task AddTransfersAsync(IReadOnlyCollection<TransferSample> samples, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(samples);
        return samples.Count == 0 ? Task.CompletedTask : WriteAsync(async (connection, transaction) =>
        {
            foreach (var sample in samples)
            {
                using var command = Command(connection, MetadataRows.AddTransfers, transaction,
                    ("@a", sample.Account), ("@d", sample.Day), ("@u", sample.Uploaded), ("@w", sample.Downloaded));
                await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);
    }

    public Task<IReadOnlyList<TransferSample>> GetTransfersAsync(long account, long fromDay, long toDay, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<TransferSample>>(async connection =>
            await ReadRowsAsync(Command(connection, MetadataRows.Transfers, null, ("@a", account), ("@f", fromDay), ("@t", toDay)), MetadataRows.ReadTransfer, cancellationToken).ConfigureAwait(false),
            cancellationToken);

    public Task TouchPathsAsync(IReadOnlyCollection<(long Account, StorePath Path, long Time)> uses, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(uses);
        return uses.Count == 0 ? Task.CompletedTask : WriteAsync(async (connection, transaction) =>
        {
            using var command = Command(connection, MetadataRows.TouchPath, transaction, ("@a", 0L), ("@p", ""), ("@t", 0L));
            foreach (var (account, path, time) in uses)
            {
                command.Parameters["@a"].Value = account;
                command.Parameters["@p"].Value = path.BaseName;
                command.Parameters["@t"].Value = time;
                await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);
    }

    public Task<(long Paths, long NarBytes)> GetStorageAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var reader = await Command(connection, MetadataRows.Storage, null, ("@a", account)).ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? (reader.GetInt64(0), reader.GetInt64(1)) : (0L, 0L);
        }, cancellationToken);

    public Task<IReadOnlyList<StorageSample>> GetStorageHistoryAsync(long account, long fromDay, long toDay, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<StorageSample>>(async connection =>
            await ReadRowsAsync(Command(connection, MetadataRows.StorageHistory, null, ("@a", account), ("@f", fromDay), ("@t", toDay)), MetadataRows.ReadStorageSample, cancellationToken).ConfigureAwait(false),
            cancellationToken);

    private static async Task<List<StorePath>> ReadPathsAsync(SqliteCommand command, CancellationToken cancellationToken)
    {
        using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        var result = new List<StorePath>();
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            result.Add(StorePath.FromBaseName(reader.GetString(0)));
        }

        return result;
    }

    public Task<IReadOnlySet<StorePath>> GetReferrersAsync(long account, StorePath path, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlySet<StorePath>>(async connection =>
        {
            // A self-referencing path is among its own referrers, as in Nix.
            using var command = Command(connection, """
                SELECT q.path FROM paths p JOIN refs r ON r.reference = p.id JOIN paths q ON q.id = r.referrer
                WHERE p.account_id = $a AND p.path = $p
                UNION
                SELECT p.path FROM paths p WHERE p.account_id = $a AND p.path = $p AND p.self_reference = 1
                """, null, ("$a", account), ("$p", path.BaseName));
            return new SortedSet<StorePath>(await ReadPathsAsync(command, cancellationToken).ConfigureAwait(false));
        }, cancellationToken);

    public Task<IReadOnlyDictionary<string, StorePath?>?> GetDerivationOutputsAsync(long account, StorePath drvPath, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var exists = Command(connection, "SELECT id FROM paths WHERE account_id = $a AND path = $p", null, ("$a", account), ("$p", drvPath.BaseName));
            if (await exists.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not long id)
            {
                return null;
            }

            using var command = Command(connection, "SELECT output, path FROM drv_outputs WHERE drv_id = $id", null, ("$id", id));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var outputs = new SortedDictionary<string, StorePath?>(StringComparer.Ordinal);
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                outputs[reader.GetString(0)] = reader.IsDBNull(1) ? null : StorePath.FromBaseName(reader.GetString(1));
            }

            return (IReadOnlyDictionary<string, StorePath?>?)outputs;
        }, cancellationToken);

    public Task<IReadOnlyDictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>> GetDerivationOutputsAsync(long account,
        IReadOnlyCollection<StorePath> drvPaths, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(drvPaths);
        if (drvPaths.Count == 0)
        {
            return Task.FromResult<IReadOnlyDictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>>(new Dictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>());
        }

        return ReadAsync<IReadOnlyDictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>>(async connection =>
        {
            using var command = Command(connection, """
                SELECT p.path, o.output, o.path
                FROM json_each($paths) j CROSS JOIN paths p ON p.account_id = $a AND p.path = j.value
                LEFT JOIN drv_outputs o ON o.drv_id = p.id
                """, null, ("$a", account), ("$paths", MetadataRows.JsonArray(drvPaths.Select(d => d.BaseName))));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var found = new Dictionary<StorePath, SortedDictionary<string, StorePath?>>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                var drv = StorePath.FromBaseName(reader.GetString(0));
                if (!found.TryGetValue(drv, out var outputs))
                {
                    found[drv] = outputs = new SortedDictionary<string, StorePath?>(StringComparer.Ordinal);
                }

                if (!reader.IsDBNull(1))
                {
                    outputs[reader.GetString(1)] = reader.IsDBNull(2) ? null : StorePath.FromBaseName(reader.GetString(2));
                }
            }

            return found.ToDictionary(f => f.Key, f => (IReadOnlyDictionary<string, StorePath?>)f.Value);
        }, cancellationToken);
    }

    public Task<IReadOnlySet<StorePath>> GetValidDeriversAsync(long account, StorePath output, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlySet<StorePath>>(async connection =>
        {
            using var command = Command(connection, """
                SELECT p.path FROM drv_outputs o JOIN paths p ON p.id = o.drv_id
                WHERE o.path = $o AND p.account_id = $a
                """, null, ("$a", account), ("$o", output.BaseName));
            return new SortedSet<StorePath>(await ReadPathsAsync(command, cancellationToken).ConfigureAwait(false));
        }, cancellationToken);

    private static readonly string[] InsertParameters =
        ["$a", "$path", "$hashPart", "$narHash", "$narSize", "$deriver", "$ca", "$time", "$ultimate", "$self", "$provenance", "$trust"];

    public Task RegisterAsync(long account, IReadOnlyList<NewPath> paths, CancellationToken cancellationToken)
    {
        if (paths.Count == 0)
        {
            return Task.CompletedTask;
        }

        return WriteAsync(async (connection, transaction) =>
        {
            // Which of them the view already has: those stay as they are.
            var existing = new HashSet<string>(StringComparer.Ordinal);
            using (var query = Command(connection, "SELECT p.path FROM json_each($paths) j CROSS JOIN paths p ON p.account_id = $a AND p.path = j.value",
                transaction, ("$paths", MetadataRows.JsonArray(paths.Select(p => p.Info.Path.BaseName))), ("$a", account)))
            {
                foreach (var path in await ReadPathsAsync(query, cancellationToken).ConfigureAwait(false))
                {
                    existing.Add(path.BaseName);
                }
            }

            using var insert = Command(connection, """
                INSERT INTO paths (account_id, path, hash_part, nar_hash, nar_size, deriver, ca, registration_time, ultimate,
                                   self_reference, provenance, trust)
                VALUES ($a, $path, $hashPart, $narHash, $narSize, $deriver, $ca, $time, $ultimate, $self, $provenance, $trust)
                RETURNING id
                """, transaction);
            // Types are inferred from each value (the hash is a blob, sizes are integers).
            var parameters = InsertParameters.ToDictionary(n => n, n => insert.Parameters.Add(new SqliteParameter(n, DBNull.Value)));
            using var refs = Command(connection, """
                INSERT INTO refs (referrer, reference)
                SELECT $id, p.id FROM json_each($refs) j CROSS JOIN paths p ON p.account_id = $a AND p.path = j.value
                """, transaction);
            var refsId = refs.Parameters.Add("$id", SqliteType.Integer);
            var refsList = refs.Parameters.Add("$refs", SqliteType.Text);
            refs.Parameters.AddWithValue("$a", account);
            using var sigs = Command(connection, "INSERT OR IGNORE INTO sigs (path_id, sig) SELECT $id, value FROM json_each($sigs)", transaction);
            var sigsId = sigs.Parameters.Add("$id", SqliteType.Integer);
            var sigsList = sigs.Parameters.Add("$sigs", SqliteType.Text);
            using var outputs = Command(connection, "INSERT INTO drv_outputs (drv_id, output, path) VALUES ($id, $output, $path)", transaction);
            var outputsId = outputs.Parameters.Add("$id", SqliteType.Integer);
            var outputName = outputs.Parameters.Add("$output", SqliteType.Text);
            var outputPath = outputs.Parameters.Add("$path", SqliteType.Text);

            foreach (var newPath in paths)
            {
                var info = newPath.Info;
                if (!existing.Add(info.Path.BaseName))
                {
                    continue;
                }

                parameters["$a"].Value = account;
                parameters["$path"].Value = info.Path.BaseName;
                parameters["$hashPart"].Value = info.Path.HashPart;
                parameters["$narHash"].Value = info.NarHash.Digest.ToArray();
                parameters["$narSize"].Value = info.NarSize;
                parameters["$deriver"].Value = (object?)info.Deriver?.BaseName ?? DBNull.Value;
                parameters["$ca"].Value = (object?)info.ContentAddress?.ToString() ?? DBNull.Value;
                parameters["$time"].Value = info.RegistrationTime;
                parameters["$ultimate"].Value = info.Ultimate ? 1 : 0;
                parameters["$self"].Value = info.HasSelfReference ? 1 : 0;
                parameters["$provenance"].Value = MetadataRows.ProvenanceText(newPath.Provenance);
                parameters["$trust"].Value = MetadataRows.TrustText(newPath.Trust);
                var id = (long)(await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;

                var others = info.OtherReferences.Select(r => r.BaseName).ToList();
                if (others.Count > 0)
                {
                    refsId.Value = id;
                    refsList.Value = MetadataRows.JsonArray(others);
                    var inserted = await refs.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                    if (inserted != others.Count)
                    {
                        var found = new HashSet<string>(StringComparer.Ordinal);
                        using var check = Command(connection, "SELECT p.path FROM json_each($refs) j CROSS JOIN paths p ON p.account_id = $a AND p.path = j.value",
                            transaction, ("$refs", MetadataRows.JsonArray(others)), ("$a", account));
                        foreach (var present in await ReadPathsAsync(check, cancellationToken).ConfigureAwait(false))
                        {
                            found.Add(present.BaseName);
                        }

                        throw new MissingReferencesException(info.Path, others.Where(o => !found.Contains(o)).Select(StorePath.FromBaseName).ToList());
                    }
                }

                if (info.Signatures.Count > 0)
                {
                    sigsId.Value = id;
                    sigsList.Value = MetadataRows.JsonArray(info.Signatures);
                    await sigs.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                }

                foreach (var (name, output) in newPath.DerivationOutputs ?? new Dictionary<string, StorePath?>())
                {
                    outputsId.Value = id;
                    outputName.Value = name;
                    outputPath.Value = (object?)output?.BaseName ?? DBNull.Value;
                    await outputs.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                }
            }
        }, cancellationToken);
    }

    public long PathRecordsVersion => Interlocked.Read(ref _pathRecordsVersion);

    private long _pathRecordsVersion;

    // After the commit: a reader that read the version before its query and saw the old record keeps it under the old version.
    private void PathRecordsChanged() => Interlocked.Increment(ref _pathRecordsVersion);

    public async Task AddSignaturesAsync(long account, StorePath path, IReadOnlyCollection<string> signatures, CancellationToken cancellationToken)
    {
        await WriteAsync(async (connection, transaction) =>
        {
            using var command = Command(connection, """
                INSERT OR IGNORE INTO sigs (path_id, sig)
                SELECT p.id, j.value FROM paths p, json_each($sigs) j WHERE p.account_id = $a AND p.path = $p
                """, transaction, ("$sigs", MetadataRows.JsonArray(signatures)), ("$a", account), ("$p", path.BaseName));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken).ConfigureAwait(false);
        PathRecordsChanged();
    }

    public Task<IReadOnlyList<GraphNode>> GetGraphAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<GraphNode>>(async connection =>
        {
            using var command = Command(connection, $"SELECT {MetadataRows.GraphColumns("group_concat")} FROM paths p WHERE p.account_id = $a", null, ("$a", account));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var nodes = new List<GraphNode>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                nodes.Add(MetadataRows.ReadGraphNode(reader));
            }

            return nodes;
        }, cancellationToken);

    public async Task DeletePathsAsync(long account, IReadOnlyList<StorePath> paths, CancellationToken cancellationToken)
    {
        if (paths.Count == 0)
        {
            return;
        }

        await WriteAsync(async (connection, transaction) =>
        {
            using var delete = Command(connection, "DELETE FROM paths WHERE account_id = $a AND path = $p", transaction);
            delete.Parameters.AddWithValue("$a", account);
            var path = delete.Parameters.Add("$p", SqliteType.Text);
            foreach (var storePath in paths)
            {
                path.Value = storePath.BaseName;
                await delete.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken).ConfigureAwait(false);
        PathRecordsChanged();
    }

    public Task<IReadOnlySet<NixHash>> GetReferencedBlobsAsync(IReadOnlyCollection<NixHash> narHashes, CancellationToken cancellationToken)
    {
        if (narHashes.Count == 0)
        {
            return Task.FromResult<IReadOnlySet<NixHash>>(new HashSet<NixHash>());
        }

        return ReadAsync<IReadOnlySet<NixHash>>(async connection =>
        {
            using var command = Command(connection, "SELECT DISTINCT p.nar_hash FROM json_each($hashes) j CROSS JOIN paths p ON p.nar_hash = unhex(j.value)",
                null, ("$hashes", MetadataRows.JsonArray(narHashes.Select(h => h.ToBase16()))));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var result = new HashSet<NixHash>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                result.Add(new NixHash(NixHashAlgorithm.Sha256, (byte[])reader.GetValue(0)));
            }

            return result;
        }, cancellationToken);
    }

    public Task AddRootAsync(long account, RootKind kind, string name, StorePath path, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var command = Command(connection, """
                INSERT INTO roots (account_id, kind, name, path, created) VALUES ($a, $k, $n, $p, $t)
                ON CONFLICT (account_id, kind, name) DO UPDATE SET path = excluded.path
                """, transaction, ("$a", account), ("$k", MetadataRows.KindText(kind)), ("$n", name), ("$p", path.BaseName), ("$t", MetadataRows.Now()));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<RootRecord>> GetRootsAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<RootRecord>>(async connection =>
        {
            using var command = Command(connection, "SELECT kind, name, path FROM roots WHERE account_id = $a ORDER BY kind, name", null, ("$a", account));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var roots = new List<RootRecord>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                roots.Add(new RootRecord(MetadataRows.ParseKind(reader.GetString(0)), reader.GetString(1), StorePath.FromBaseName(reader.GetString(2))));
            }

            return roots;
        }, cancellationToken);

    public Task RemoveRootAsync(long account, RootKind kind, string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var command = Command(connection, "DELETE FROM roots WHERE account_id = $a AND kind = $k AND name = $n", transaction,
                ("$a", account), ("$k", MetadataRows.KindText(kind)), ("$n", name));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public async ValueTask DisposeAsync()
    {
        while (_prepared.TryTake(out var connection))
        {
            await connection.Connection.DisposeAsync().ConfigureAwait(false);
        }

        _writeLock.Dispose();
        SqliteConnection.ClearAllPools();
    }
}
