using Microsoft.Data.Sqlite;

namespace Kiln.Store.Metadata.Sqlite;

public sealed partial class SqliteMetadataStore
{
    private const string BuildColumns = "id, step_key, drv_path, account_id, status, failure, error, started, stopped, cpu_user_us, cpu_system_us, peak_memory, outputs";

    public Task<long> RecordBuildAsync(BuildRecord build, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, """
                INSERT INTO builds (step_key, drv_path, account_id, status, failure, error, started, stopped, cpu_user_us, cpu_system_us, peak_memory, outputs)
                VALUES ($k, $d, $a, $s, $f, $e, $t0, $t1, $cu, $cs, $m, $o) RETURNING id
                """, transaction,
                ("$k", build.StepKey), ("$d", build.DrvPath), ("$a", build.AccountId), ("$s", build.Succeeded ? "built" : "failed"),
                ("$f", build.Failure), ("$e", build.Error), ("$t0", build.Started), ("$t1", build.Stopped), ("$cu", build.CpuUserMicroseconds),
                ("$cs", build.CpuSystemMicroseconds), ("$m", build.PeakMemory), ("$o", build.OutputsJson));
            return (long)(await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }, cancellationToken);

    public Task<BuildRecord?> FindSuccessfulBuildAsync(string stepKey, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, $"SELECT {BuildColumns} FROM builds WHERE step_key = $k AND status = 'built' ORDER BY id DESC LIMIT 1", null, ("$k", stepKey));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? ReadBuild(reader) : null;
        }, cancellationToken);

    public Task<BuildRecord?> GetBuildAsync(long account, long id, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, $"SELECT {BuildColumns} FROM builds WHERE id = $i AND account_id = $a", null, ("$i", id), ("$a", account));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? ReadBuild(reader) : null;
        }, cancellationToken);

    public Task<IReadOnlyList<BuildRecord>> ListBuildsAsync(long? account, int limit, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<BuildRecord>>(async connection =>
        {
            using var command = Command(connection,
                $"SELECT {BuildColumns} FROM builds WHERE $a IS NULL OR account_id = $a ORDER BY id DESC LIMIT $l", null, ("$a", account), ("$l", limit));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var builds = new List<BuildRecord>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                builds.Add(ReadBuild(reader));
            }

            return builds;
        }, cancellationToken);

    private static BuildRecord ReadBuild(SqliteDataReader reader) => new()
    {
        Id = reader.GetInt64(0),
        StepKey = reader.GetString(1),
        DrvPath = reader.GetString(2),
        AccountId = reader.GetInt64(3),
        Succeeded = reader.GetString(4) == "built",
        Failure = reader.GetString(5),
        Error = reader.GetString(6),
        Started = reader.GetInt64(7),
        Stopped = reader.GetInt64(8),
        CpuUserMicroseconds = reader.IsDBNull(9) ? null : reader.GetInt64(9),
        CpuSystemMicroseconds = reader.IsDBNull(10) ? null : reader.GetInt64(10),
        PeakMemory = reader.IsDBNull(11) ? null : reader.GetInt64(11),
        OutputsJson = reader.GetString(12),
    };
}
