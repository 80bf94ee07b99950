namespace Kiln.Store.Metadata.Sqlite;

// IBuildMetadata: builds and the accounts they were for.
public sealed partial class SqliteMetadataStore
{
    public Task<long> StartBuildAsync(string stepKey, string drvPath, long account, long started, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, """
                INSERT INTO builds (step_key, drv_path, account_id, status, started, stopped, pname) VALUES ($k, $d, $a, 'running', $t, 0, $p) RETURNING id
                """, transaction, ("$k", stepKey), ("$d", drvPath), ("$a", account), ("$t", started), ("$p", PackageNames.Of(drvPath)));
            var id = (long)(await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
            using var link = Command(connection, "INSERT INTO build_accounts (build_id, account_id) VALUES ($b, $a)", transaction, ("$b", id), ("$a", account));
            await link.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return id;
        }, cancellationToken);

    public Task FinishBuildAsync(long id, BuildEnd outcome, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(outcome);
        var end = outcome;
        return WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, """
                UPDATE builds SET status = $s, failure = $f, error = $e, stopped = $t, cpu_user_us = $cu, cpu_system_us = $cs, peak_memory = $m, outputs = $o, agent = $g, attempts = $n, ran_from = $r
                WHERE id = $i AND status = 'running'
                """, transaction,
                ("$i", id), ("$s", end.Succeeded ? "built" : "failed"), ("$f", end.Failure), ("$e", end.Error), ("$t", end.Stopped),
                ("$cu", end.CpuUserMicroseconds), ("$cs", end.CpuSystemMicroseconds), ("$m", end.PeakMemory), ("$o", MetadataRows.OutputsJson(end.Outputs)), ("$g", end.Agent), ("$n", end.Attempts), ("$r", end.RanFrom));
            await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }

    public Task AddBuildAccountAsync(long id, long account, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var link = Command(connection, "INSERT INTO build_accounts (build_id, account_id) VALUES ($b, $a) ON CONFLICT DO NOTHING", transaction,
                ("$b", id), ("$a", account));
            await link.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task TagBuildAsync(long id, long account, IReadOnlyCollection<BuildTag> tags, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(tags);
        return tags.Count == 0 ? Task.CompletedTask : WriteAsync(async (connection, transaction) =>
        {
            foreach (var tag in tags)
            {
                using var insert = Command(connection, MetadataRows.TagBuild, transaction, ("@b", id), ("@a", account), ("@n", tag.Name), ("@v", tag.Value));
                await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);
    }

    public Task<IReadOnlyList<BuildTag>> GetBuildTagsAsync(long id, long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<BuildTag>>(async connection =>
            await ReadRowsAsync(Command(connection, MetadataRows.BuildTags, null, ("@b", id), ("@a", account)), MetadataRows.ReadTag, cancellationToken).ConfigureAwait(false),
            cancellationToken);

    public Task<int> AbandonRunningBuildsAsync(string reason, long now, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, """
                UPDATE builds SET status = 'failed', failure = 'MiscFailure', error = $e, stopped = $t
                WHERE status = 'running' AND NOT EXISTS (SELECT 1 FROM step_claims c WHERE c.step_key = builds.step_key AND c.expires >= $t)
                """, transaction, ("$e", reason), ("$t", now));
            return await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    // One server writes this database; its queue counts the account's builds (the slots still work, for the contract).
    public bool SharedByFrontDoors => false;

    // A write transaction here holds the database's write lock from its start: claims count one after the other.
    public Task<bool> ClaimAccountSlotAsync(string stepKey, string owner, long account, int maxJobs, long now, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var claim = Command(connection, MetadataRows.ClaimAccountSlot, transaction,
                ("@k", stepKey), ("@o", owner), ("@a", account), ("@max", (long)maxJobs), ("@now", now));
            return await claim.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not null;
        }, cancellationToken);

    public Task<int> CountAccountSlotsAsync(long account, long now, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var count = Command(connection, MetadataRows.CountAccountSlots, null, ("@a", account), ("@now", now));
            return Convert.ToInt32(await count.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false), System.Globalization.CultureInfo.InvariantCulture);
        }, cancellationToken);

    public Task<bool> ClaimStepAsync(string stepKey, string owner, long expires, long now, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // The statement PostgreSQL runs too (SQLite reads @name parameters as well as $name).
            using var claim = Command(connection, $"{MetadataRows.ClaimStep} RETURNING owner", transaction,
                ("@k", stepKey), ("@o", owner), ("@e", expires), ("@now", now));
            return await claim.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not null;
        }, cancellationToken);

    // One machine's database: its clock is this machine's.
    public Task<long> ClockAsync(CancellationToken cancellationToken) => Task.FromResult(DateTimeOffset.UtcNow.ToUnixTimeSeconds());

    public Task<IReadOnlySet<string>> RenewStepClaimsAsync(IReadOnlyCollection<string> stepKeys, string owner, long expires, CancellationToken cancellationToken) =>
        stepKeys.Count == 0 ? Task.FromResult<IReadOnlySet<string>>(new HashSet<string>()) : WriteAsync<IReadOnlySet<string>>(async (connection, transaction) =>
        {
            using var renew = Command(connection, "UPDATE step_claims SET expires = $e WHERE owner = $o AND step_key IN (SELECT value FROM json_each($keys)) RETURNING step_key",
                transaction, ("$e", expires), ("$o", owner), ("$keys", MetadataRows.JsonArray(stepKeys)));
            using var reader = await renew.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var renewed = new HashSet<string>(StringComparer.Ordinal);
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                renewed.Add(reader.GetString(0));
            }

            return renewed;
        }, cancellationToken);

    public Task ReleaseStepClaimsAsync(string owner, string? stepKey, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var release = Command(connection, "DELETE FROM step_claims WHERE owner = $o AND ($k IS NULL OR step_key = $k)", transaction, ("$o", owner), ("$k", stepKey));
            await release.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<BuildRecord?> FindSuccessfulBuildAsync(string stepKey, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, $"SELECT {MetadataRows.BuildColumns} FROM builds b WHERE b.step_key = $k AND b.status = 'built' ORDER BY b.id DESC LIMIT 1",
                null, ("$k", stepKey));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? MetadataRows.ReadBuild(reader) : null;
        }, cancellationToken);

    public Task<BuildRecord?> FindFailedBuildAsync(string stepKey, long account, IReadOnlyList<string> failures, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(failures);
        return failures.Count == 0 ? Task.FromResult<BuildRecord?>(null) : ReadAsync(async connection =>
        {
            using var command = Command(connection, MetadataRows.FailedBuild(failures.Count), null,
                [("@k", stepKey), ("@a", account), .. failures.Select((f, i) => ("@f" + i.ToString(System.Globalization.CultureInfo.InvariantCulture), (object?)f))]);
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? MetadataRows.ReadBuild(reader) : null;
        }, cancellationToken);
    }

    public Task<IReadOnlySet<long>> FindBuildIdsAsync(IReadOnlyCollection<long> ids, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlySet<long>>(async connection =>
        {
            using var select = Command(connection, "SELECT b.id FROM json_each($ids) j CROSS JOIN builds b ON b.id = j.value WHERE b.drv_path <> ''", null,
                ("$ids", "[" + string.Join(',', ids.Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture))) + "]"));
            return new HashSet<long>(await ReadAllAsync(select, r => r.GetInt64(0), cancellationToken).ConfigureAwait(false));
        }, cancellationToken);

    public Task<BuildRecord?> GetBuildAsync(long account, long id, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, $"""
                SELECT {MetadataRows.BuildColumns} FROM build_accounts f JOIN builds b ON b.id = f.build_id WHERE f.build_id = $i AND f.account_id = $a
                """, null, ("$i", id), ("$a", account));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? MetadataRows.ReadBuild(reader) : null;
        }, cancellationToken);

    public Task<IReadOnlyList<BuildRecord>> ListBuildsAsync(long? account, BuildQuery query, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<BuildRecord>>(async connection =>
        {
            var (sql, parameters) = MetadataRows.ListBuilds(account, query);
            return await ReadRowsAsync(Command(connection, sql, null, [.. parameters.Select(p => ("@" + p.Name, p.Value))]), MetadataRows.ReadBuild, cancellationToken)
                .ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<BuildUsage>> RecentUsageAsync(string packageName, int limit, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<BuildUsage>>(async connection =>
            await ReadRowsAsync(Command(connection, MetadataRows.RecentUsage, null, ("@p", packageName), ("@n", (long)limit)), MetadataRows.ReadUsage, cancellationToken)
                .ConfigureAwait(false), cancellationToken);

    public Task<long> CpuMicrosecondsSinceAsync(long account, long since, CancellationToken cancellationToken) =>
        ReadAsync(async connection => Convert.ToInt64(await Command(connection, MetadataRows.CpuSince, null, ("@a", account), ("@s", since))
            .ExecuteScalarAsync(cancellationToken).ConfigureAwait(false), System.Globalization.CultureInfo.InvariantCulture), cancellationToken);

    public Task<BuildRecord?> FindLatestBuildAsync(IReadOnlyList<long> accounts, string drvPath, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(accounts);
        return ReadAsync(async connection =>
        {
            using var command = Command(connection, $"""
                SELECT {MetadataRows.BuildColumns} FROM builds b
                WHERE b.drv_path = $d AND EXISTS (SELECT 1 FROM build_accounts f JOIN json_each($accounts) j ON f.account_id = j.value WHERE f.build_id = b.id)
                ORDER BY b.status = 'built' DESC, b.id DESC LIMIT 1
                """, null, ("$d", drvPath), ("$accounts", "[" + string.Join(',', accounts) + "]"));
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? MetadataRows.ReadBuild(reader) : null;
        }, cancellationToken);
    }
}
