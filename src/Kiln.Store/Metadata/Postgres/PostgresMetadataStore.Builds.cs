namespace Kiln.Store.Metadata.Postgres;

// IBuildMetadata: builds and the accounts they were for.
public sealed partial class PostgresMetadataStore
{
    public Task<long> StartBuildAsync(string stepKey, string drvPath, long account, long started, CancellationToken cancellationToken) =>
        WriteOneAsync(async connection =>
        {
            using var insert = Command(connection, """
                WITH b AS (INSERT INTO builds (step_key, drv_path, account_id, status, started, stopped, pname) VALUES (@k, @d, @a, 'running', @t, 0, @p) RETURNING id)
                INSERT INTO build_accounts (build_id, account_id) SELECT id, @a FROM b RETURNING build_id
                """, null, ("k", stepKey), ("d", drvPath), ("a", account), ("t", started), ("p", PackageNames.Of(drvPath)));
            return (long)(await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }, cancellationToken);

    public Task FinishBuildAsync(long id, BuildEnd outcome, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(outcome);
        return WriteOneAsync(async connection =>
        {
            using var update = Command(connection, """
                UPDATE builds SET status = @s, failure = @f, error = @e, stopped = @t, cpu_user_us = @cu::bigint, cpu_system_us = @cs::bigint,
                    peak_memory = @m::bigint, outputs = @o, agent = @g, attempts = @n, ran_from = @r::bigint
                WHERE id = @i AND status = 'running'
                """, null,
                ("i", id), ("s", outcome.Succeeded ? "built" : "failed"), ("f", outcome.Failure), ("e", outcome.Error), ("t", outcome.Stopped),
                ("cu", outcome.CpuUserMicroseconds), ("cs", outcome.CpuSystemMicroseconds), ("m", outcome.PeakMemory), ("o", MetadataRows.OutputsJson(outcome.Outputs)), ("g", outcome.Agent), ("n", outcome.Attempts), ("r", outcome.RanFrom));
            await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }

    public Task AddBuildAccountAsync(long id, long account, CancellationToken cancellationToken) =>
        WriteOneAsync(async connection =>
        {
            using var link = Command(connection, "INSERT INTO build_accounts (build_id, account_id) VALUES (@b, @a) ON CONFLICT DO NOTHING", null,
                ("b", id), ("a", account));
            await link.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task TagBuildAsync(long id, long account, IReadOnlyCollection<BuildTag> tags, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(tags);
        return tags.Count == 0 ? Task.CompletedTask : WriteAsync(async (connection, transaction) =>
        {
            foreach (var tag in tags)
            {
                using var insert = Command(connection, MetadataRows.TagBuild, transaction, ("b", id), ("a", account), ("n", tag.Name), ("v", tag.Value));
                await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);
    }

    public Task<IReadOnlyList<BuildTag>> GetBuildTagsAsync(long id, long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<BuildTag>>(async connection =>
        {
            using var select = Command(connection, MetadataRows.BuildTags, null, ("b", id), ("a", account));
            return await ReadAllAsync(select, MetadataRows.ReadTag, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<int> AbandonRunningBuildsAsync(string reason, long now, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, """
                UPDATE builds SET status = 'failed', failure = 'MiscFailure', error = @e, stopped = @t
                WHERE status = 'running' AND NOT EXISTS (SELECT 1 FROM step_claims c WHERE c.step_key = builds.step_key AND c.expires >= @t)
                """, transaction, ("e", reason), ("t", now));
            return await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    // ON CONFLICT … DO UPDATE locks the claim's row, so of two front doors claiming at once exactly one gets it.
    public Task<bool> ClaimStepAsync(string stepKey, string owner, long expires, long now, CancellationToken cancellationToken) =>
        WriteOneAsync(async connection =>
        {
            using var claim = Command(connection, $"{MetadataRows.ClaimStep} RETURNING owner", null, ("k", stepKey), ("o", owner), ("e", expires), ("now", now));
            return await claim.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not null;
        }, cancellationToken);

    public bool SharedByFrontDoors => true;

    public Task<bool> ClaimAccountSlotAsync(string stepKey, string owner, long account, int maxJobs, long now, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // The account's row locked first: two front doors claiming its last slot at once count one after the other
            // (each statement sees what committed before it began: READ COMMITTED, which WriteAsync asks for). NO KEY:
            // the lock a row referring to the account takes (a build, a path) does not wait for it, nor it for them.
            using var serialise = Command(connection, "SELECT 1 FROM accounts WHERE id = @a FOR NO KEY UPDATE", transaction, ("a", account));
            await serialise.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            using var claim = Command(connection, MetadataRows.ClaimAccountSlot, transaction,
                ("k", stepKey), ("o", owner), ("a", account), ("max", (long)maxJobs), ("now", now));
            return await claim.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not null;
        }, cancellationToken);

    public Task<int> CountAccountSlotsAsync(long account, long now, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var count = Command(connection, MetadataRows.CountAccountSlots, null, ("a", account), ("now", now));
            return Convert.ToInt32(await count.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false), System.Globalization.CultureInfo.InvariantCulture);
        }, cancellationToken);

    public Task<long> ClockAsync(CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, "SELECT floor(extract(epoch FROM clock_timestamp()))::bigint");
            return (long)(await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }, cancellationToken);

    public Task<IReadOnlySet<string>> RenewStepClaimsAsync(IReadOnlyCollection<string> stepKeys, string owner, long expires, CancellationToken cancellationToken) =>
        stepKeys.Count == 0 ? Task.FromResult<IReadOnlySet<string>>(new HashSet<string>()) : WriteOneAsync<IReadOnlySet<string>>(async connection =>
        {
            using var renew = Command(connection, "UPDATE step_claims SET expires = @e WHERE owner = @o AND step_key = ANY(@keys::text[]) RETURNING step_key", null,
                ("e", expires), ("o", owner), ("keys", stepKeys.ToArray()));
            return (await ReadAllAsync(renew, r => r.GetString(0), cancellationToken).ConfigureAwait(false)).ToHashSet(StringComparer.Ordinal);
        }, cancellationToken);

    public Task ReleaseStepClaimsAsync(string owner, string? stepKey, CancellationToken cancellationToken) =>
        WriteOneAsync(async connection =>
        {
            using var release = Command(connection, "DELETE FROM step_claims WHERE owner = @o AND (@k::text IS NULL OR step_key = @k::text)", null,
                ("o", owner), ("k", stepKey));
            await release.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<BuildRecord?> FindSuccessfulBuildAsync(string stepKey, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, $"SELECT {MetadataRows.BuildColumns} FROM builds b WHERE b.step_key = @k AND b.status = 'built' ORDER BY b.id DESC LIMIT 1",
                null, ("k", stepKey));
            return await ReadOneAsync(command, MetadataRows.ReadBuild, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlySet<long>> FindBuildIdsAsync(IReadOnlyCollection<long> ids, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlySet<long>>(async connection =>
        {
            using var command = Command(connection, "SELECT id FROM builds WHERE id = ANY(@ids) AND drv_path <> ''", null, ("ids", ids.ToArray()));
            return new HashSet<long>(await ReadAllAsync(command, r => r.GetInt64(0), cancellationToken).ConfigureAwait(false));
        }, cancellationToken);

    public Task<BuildRecord?> GetBuildAsync(long account, long id, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, $"""
                SELECT {MetadataRows.BuildColumns} FROM build_accounts f JOIN builds b ON b.id = f.build_id WHERE f.build_id = @i AND f.account_id = @a
                """, null, ("i", id), ("a", account));
            return await ReadOneAsync(command, MetadataRows.ReadBuild, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<BuildRecord>> ListBuildsAsync(long? account, BuildQuery query, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<BuildRecord>>(async connection =>
        {
            var (sql, parameters) = MetadataRows.ListBuilds(account, query);
            using var command = Command(connection, sql, null, parameters);
            return await ReadAllAsync(command, MetadataRows.ReadBuild, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<BuildUsage>> RecentUsageAsync(string packageName, int limit, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<BuildUsage>>(async connection =>
        {
            using var select = Command(connection, MetadataRows.RecentUsage, null, ("p", packageName), ("n", (long)limit));
            return await ReadAllAsync(select, MetadataRows.ReadUsage, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<long> CpuMicrosecondsSinceAsync(long account, long since, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, MetadataRows.CpuSince, null, ("a", account), ("s", since));
            return Convert.ToInt64(await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false), System.Globalization.CultureInfo.InvariantCulture);
        }, cancellationToken);

    public Task<BuildRecord?> FindFailedBuildAsync(string stepKey, long account, IReadOnlyList<string> failures, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(failures);
        return failures.Count == 0 ? Task.FromResult<BuildRecord?>(null) : ReadAsync(async connection =>
        {
            using var command = Command(connection, MetadataRows.FailedBuild(failures.Count), null,
                [("k", stepKey), ("a", account), .. failures.Select((f, i) => ("f" + i.ToString(System.Globalization.CultureInfo.InvariantCulture), (object?)f))]);
            await using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? MetadataRows.ReadBuild(reader) : null;
        }, cancellationToken);
    }

    public Task<BuildRecord?> FindLatestBuildAsync(IReadOnlyList<long> accounts, string drvPath, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(accounts);
        return ReadAsync(async connection =>
        {
            using var command = Command(connection, $"""
                SELECT {MetadataRows.BuildColumns} FROM builds b
                WHERE b.drv_path = @d AND EXISTS (SELECT 1 FROM build_accounts f WHERE f.build_id = b.id AND f.account_id = ANY(@accounts::bigint[]))
                ORDER BY b.status = 'built' DESC, b.id DESC LIMIT 1
                """, null, ("d", drvPath), ("accounts", accounts.ToArray()));
            return await ReadOneAsync(command, MetadataRows.ReadBuild, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }
}
