using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Npgsql;

namespace Kiln.Store.Metadata.Postgres;

// IPathMetadata: views, registration, lookups over several views, the GC graph, roots and kept compressed NAR files.
public sealed partial class PostgresMetadataStore
{
    private static readonly string PathColumns = MetadataRows.PathColumns("string_agg", "chr(10)");

    private static string[] BaseNames(IEnumerable<StorePath> paths) => paths.Select(p => p.BaseName).ToArray();

    private static byte[][] Digests(IEnumerable<NixHash> hashes) => hashes.Select(h => h.Digest.ToArray()).ToArray();

    private static NixHash Sha256(NpgsqlDataReader reader, int column) => new(NixHashAlgorithm.Sha256, (byte[])reader.GetValue(column));

    public Task<(long Account, PathRecord Record)?> FindPathByHashPartAsync(IReadOnlyList<long> accounts, string hashPart, CancellationToken cancellationToken)
    {
        if (accounts.Count == 0)
        {
            return Task.FromResult<(long, PathRecord)?>(null);
        }

        // A globally trusted record before the others (a tenant cannot shadow a trusted path with an unsigned one of the
        // same name; see StoreView.GetRecordsAsync); among equals, the accounts' order, then the name (SQLite's provider
        // chooses alike).
        return ReadAsync<(long, PathRecord)?>(async connection =>
        {
            // One account (a token's view, or a single public cache) has a statement of its own, without the array:
            // PostgreSQL then keeps one generic plan for it, where the array made it plan every execution again
            // (measured: 150 µs of planning for 40 µs of execution).
            using var command = accounts.Count == 1
                ? Command(connection, $"""
                    SELECT {PathColumns}, p.account_id FROM paths p WHERE p.account_id = @account AND p.hash_part = @hash
                    ORDER BY p.path COLLATE "C" LIMIT 1
                    """, null, ("account", accounts[0]), ("hash", hashPart))
                : Command(connection, $"""
                    SELECT {PathColumns}, p.account_id
                    FROM unnest(@accounts::bigint[]) WITH ORDINALITY AS j(account, ord) JOIN paths p ON p.account_id = j.account AND p.hash_part = @hash
                    ORDER BY p.trust IN ({MetadataRows.GlobalTrustTexts}) DESC, j.ord, p.path COLLATE "C"
                    LIMIT 1
                    """, null, ("accounts", accounts.ToArray()), ("hash", hashPart));
            var found = await ReadOneAsync(command, r => Tuple.Create(r.GetInt64(12), MetadataRows.ReadPath(r)), cancellationToken).ConfigureAwait(false);
            return found is null ? null : (found.Item1, found.Item2);
        }, cancellationToken);
    }

    public Task<long?> FindNarAsync(IReadOnlyList<long> accounts, NixHash narHash, CancellationToken cancellationToken)
    {
        if (accounts.Count == 0)
        {
            return Task.FromResult<long?>(null);
        }

        return ReadAsync(async connection =>
        {
            // One account (every NAR GET of a token or a single public cache) without the array, as in
            // FindPathByHashPartAsync: with it PostgreSQL planned every execution again (measured: about 100-140 µs of
            // planning for 10-25 µs of execution, per NAR).
            using var command = accounts.Count == 1
                ? Command(connection, "SELECT nar_size FROM paths WHERE nar_hash = @h AND account_id = @account LIMIT 1", null,
                    ("h", narHash.Digest.ToArray()), ("account", accounts[0]))
                : Command(connection, "SELECT nar_size FROM paths WHERE nar_hash = @h AND account_id = ANY(@accounts::bigint[]) LIMIT 1", null,
                    ("h", narHash.Digest.ToArray()), ("accounts", accounts.ToArray()));
            return await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) as long?;
        }, cancellationToken);
    }

    public Task AddNarFileAsync(string file, NixHash narHash, string compression, long fileSize, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, """
                INSERT INTO nar_files (file, nar_hash, compression, file_size, created) VALUES (@f, @h, @c, @s, @n) ON CONFLICT (file) DO NOTHING
                """, transaction, ("f", file), ("h", narHash.Digest.ToArray()), ("c", compression), ("s", fileSize), ("n", MetadataRows.Now()));
            await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<string>> RemoveNarFilesAsync(IReadOnlyCollection<NixHash> narHashes, CancellationToken cancellationToken) =>
        WriteAsync<IReadOnlyList<string>>(async (connection, transaction) =>
        {
            using var delete = Command(connection, "DELETE FROM nar_files WHERE nar_hash = ANY(@hashes::bytea[]) RETURNING file", transaction, ("hashes", Digests(narHashes)));
            return await ReadAllAsync(delete, r => r.GetString(0), cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlySet<string>> FindNarFilesAsync(IReadOnlyCollection<string> files, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlySet<string>>(async connection =>
        {
            using var command = Command(connection, "SELECT file FROM nar_files WHERE file = ANY(@f)", null, ("f", files.ToArray()));
            return new HashSet<string>(await ReadAllAsync(command, r => r.GetString(0), cancellationToken).ConfigureAwait(false), StringComparer.Ordinal);
        }, cancellationToken);

    public Task<(NixHash NarHash, string Compression)?> FindNarFileAsync(string file, CancellationToken cancellationToken) =>
        ReadAsync<(NixHash, string)?>(async connection =>
        {
            using var select = Command(connection, "SELECT nar_hash, compression FROM nar_files WHERE file = @f", null, ("f", file));
            var found = await ReadOneAsync(select, r => Tuple.Create(Sha256(r, 0), r.GetString(1)), cancellationToken).ConfigureAwait(false);
            return found is null ? null : (found.Item1, found.Item2);
        }, cancellationToken);

    public Task<IReadOnlyDictionary<StorePath, PathRecord>> GetPathsAsync(long account, IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        if (paths.Count == 0)
        {
            return Task.FromResult<IReadOnlyDictionary<StorePath, PathRecord>>(new Dictionary<StorePath, PathRecord>());
        }

        return ReadAsync<IReadOnlyDictionary<StorePath, PathRecord>>(async connection =>
        {
            // One path (most of a client's queries) without the array, for the generic plan's sake (see above).
            using var command = paths.Count == 1
                ? Command(connection, $"SELECT {PathColumns} FROM paths p WHERE p.account_id = @a AND p.path = @path", null,
                    ("a", account), ("path", paths.First().BaseName))
                : Command(connection, $"SELECT {PathColumns} FROM paths p WHERE p.account_id = @a AND p.path = ANY(@paths::text[])", null,
                    ("a", account), ("paths", BaseNames(paths)));
            var records = await ReadAllAsync(command, MetadataRows.ReadPath, cancellationToken).ConfigureAwait(false);
            return records.ToDictionary(r => r.Info.Path);
        }, cancellationToken);
    }

    public Task<IReadOnlyDictionary<StorePath, PathRecord>> GetClosureAsync(long account, IReadOnlyCollection<StorePath> roots, CancellationToken cancellationToken) =>
        roots.Count == 0 ? Task.FromResult<IReadOnlyDictionary<StorePath, PathRecord>>(new Dictionary<StorePath, PathRecord>()) :
        ReadAsync<IReadOnlyDictionary<StorePath, PathRecord>>(async connection =>
        {
            // (A reference is a row of the same account's view: registration resolves it there; the account is asked
            // again at the end all the same.) The records fetched by their ids, not joined to the CTE: PostgreSQL
            // guesses a recursive CTE's size from its start, so a join would scan every account's paths (and compile
            // it) where a few primary-key lookups do.
            using var command = Command(connection, $"""
                WITH RECURSIVE closure(id) AS (
                    SELECT p.id FROM paths p WHERE p.account_id = @a AND p.path = ANY(@paths::text[])
                    UNION
                    SELECT r.reference FROM refs r JOIN closure c ON r.referrer = c.id)
                SELECT {PathColumns} FROM paths p WHERE p.id = ANY(ARRAY(SELECT id FROM closure)) AND p.account_id = @a
                """, null, ("a", account), ("paths", BaseNames(roots)));
            var records = await ReadAllAsync(command, MetadataRows.ReadPath, cancellationToken).ConfigureAwait(false);
            return records.ToDictionary(r => r.Info.Path);
        }, cancellationToken);

    public Task<StorePath?> FindByHashPartAsync(long account, string hashPart, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var command = Command(connection, "SELECT path FROM paths WHERE account_id = @a AND hash_part = @h LIMIT 1", null, ("a", account), ("h", hashPart));
            return await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is string path ? StorePath.FromBaseName(path) : (StorePath?)null;
        }, cancellationToken);

    private static StorePath ReadStorePath(NpgsqlDataReader reader) => StorePath.FromBaseName(reader.GetString(0));

    // COLLATE "C": byte order, as SQLite sorts, whatever the database's locale.
    public Task<IReadOnlyList<StorePath>> GetAllPathsAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<StorePath>>(async connection =>
        {
            using var command = Command(connection, "SELECT path FROM paths WHERE account_id = @a ORDER BY path COLLATE \"C\"", null, ("a", account));
            return await ReadAllAsync(command, ReadStorePath, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public bool SharesTempRoots => true;

    public Task PublishTempRootsAsync(string frontDoor, IReadOnlyCollection<TempRoot> roots, CancellationToken cancellationToken) =>
        roots.Count == 0 ? Task.CompletedTask : WriteOneAsync(async connection =>
        {
            using var insert = Command(connection, """
                INSERT INTO temp_roots (front_door, session, account_id, path)
                SELECT @f, s, a, p FROM unnest(@sessions::bigint[], @accounts::bigint[], @paths::text[]) AS r(s, a, p)
                ON CONFLICT DO NOTHING
                """, null, ("f", frontDoor), ("sessions", roots.Select(r => r.Session).ToArray()), ("accounts", roots.Select(r => r.Account).ToArray()),
                ("paths", roots.Select(r => r.Path.BaseName).ToArray()));
            await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task WithdrawTempRootsAsync(string frontDoor, long? session, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var delete = Command(connection, "DELETE FROM temp_roots WHERE front_door = @f AND (@s::bigint IS NULL OR session = @s::bigint)", transaction,
                ("f", frontDoor), ("s", session));
            await delete.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    // One row per front door, by the database's clock: the machines' clocks need not agree.
    public Task RenewTempRootsAsync(string frontDoor, TimeSpan lease, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var renew = Command(connection, """
                INSERT INTO temp_root_doors (front_door, expires) VALUES (@f, extract(epoch FROM now())::bigint + @l)
                ON CONFLICT (front_door) DO UPDATE SET expires = excluded.expires
                """, transaction, ("f", frontDoor), ("l", (long)lease.TotalSeconds));
            await renew.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<StorePath>> GetTempRootsAsync(long account, string frontDoor, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<StorePath>>(async connection =>
        {
            using var command = Command(connection, """
                SELECT DISTINCT r.path FROM temp_roots r JOIN temp_root_doors d ON d.front_door = r.front_door
                WHERE r.account_id = @a AND r.front_door <> @f AND d.expires >= extract(epoch FROM now())::bigint
                """, null, ("a", account), ("f", frontDoor));
            return await ReadAllAsync(command, ReadStorePath, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<StoreTotals> GetTotalsAsync(CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, "SELECT (SELECT COUNT(*) FROM paths), COUNT(*), COALESCE(SUM(size), 0)::bigint FROM (SELECT MAX(nar_size) AS size FROM paths GROUP BY nar_hash) AS nars");
            await using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            return new StoreTotals(reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2));
        }, cancellationToken);

    public Task RecordStorageAsync(long day, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            await using var command = Command(connection, MetadataRows.RecordStorage, transaction, ("d", day));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task AddTransfersAsync(IReadOnlyCollection<TransferSample> samples, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(samples);
        return samples.Count == 0 ? Task.CompletedTask : WriteAsync(async (connection, transaction) =>
        {
            foreach (var sample in samples)
            {
                await using var command = Command(connection, MetadataRows.AddTransfers, transaction,
                    ("a", sample.Account), ("d", sample.Day), ("u", sample.Uploaded), ("w", sample.Downloaded));
                await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);
    }

    public Task<IReadOnlyList<TransferSample>> GetTransfersAsync(long account, long fromDay, long toDay, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<TransferSample>>(async connection =>
        {
            await using var command = Command(connection, MetadataRows.Transfers, null, ("a", account), ("f", fromDay), ("t", toDay));
            return await ReadAllAsync(command, MetadataRows.ReadTransfer, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task TouchPathsAsync(IReadOnlyCollection<(long Account, StorePath Path, long Time)> uses, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(uses);
        return uses.Count == 0 ? Task.CompletedTask : WriteAsync(async (connection, transaction) =>
        {
            // One statement for the lot: the uses as arrays, unnested.
            await using var command = Command(connection, """
                UPDATE paths p SET last_used = u.t FROM unnest(@a::bigint[], @p::text[], @t::bigint[]) AS u(a, p, t)
                WHERE p.account_id = u.a AND p.path = u.p AND p.last_used < u.t - 3600
                """, transaction,
                ("a", uses.Select(u => u.Account).ToArray()), ("p", uses.Select(u => u.Path.BaseName).ToArray()), ("t", uses.Select(u => u.Time).ToArray()));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }

    public Task<(long Paths, long NarBytes)> GetStorageAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            await using var command = Command(connection, MetadataRows.Storage, null, ("a", account));
            await using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? (reader.GetInt64(0), reader.GetInt64(1)) : (0L, 0L);
        }, cancellationToken);

    public Task<IReadOnlyList<StorageSample>> GetStorageHistoryAsync(long account, long fromDay, long toDay, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<StorageSample>>(async connection =>
        {
            await using var command = Command(connection, MetadataRows.StorageHistory, null, ("a", account), ("f", fromDay), ("t", toDay));
            return await ReadAllAsync(command, MetadataRows.ReadStorageSample, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlySet<StorePath>> GetReferrersAsync(long account, StorePath path, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlySet<StorePath>>(async connection =>
        {
            // A self-referencing path is among its own referrers, as in Nix.
            using var command = Command(connection, """
                SELECT q.path FROM paths p JOIN refs r ON r.reference = p.id JOIN paths q ON q.id = r.referrer
                WHERE p.account_id = @a AND p.path = @p
                UNION
                SELECT p.path FROM paths p WHERE p.account_id = @a AND p.path = @p AND p.self_reference
                """, null, ("a", account), ("p", path.BaseName));
            return new SortedSet<StorePath>(await ReadAllAsync(command, ReadStorePath, cancellationToken).ConfigureAwait(false));
        }, cancellationToken);

    public async Task<IReadOnlyDictionary<string, StorePath?>?> GetDerivationOutputsAsync(long account, StorePath drvPath, CancellationToken cancellationToken)
    {
        var found = await GetDerivationOutputsAsync(account, [drvPath], cancellationToken).ConfigureAwait(false);
        return found.TryGetValue(drvPath, out var outputs) ? outputs : null;
    }

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
                SELECT p.path, o.output, o.path FROM paths p LEFT JOIN drv_outputs o ON o.drv_id = p.id
                WHERE p.account_id = @a AND p.path = ANY(@paths::text[])
                """, null, ("a", account), ("paths", BaseNames(drvPaths)));
            var rows = await ReadAllAsync(command, r => (Drv: r.GetString(0), Output: r.IsDBNull(1) ? null : r.GetString(1), Path: r.IsDBNull(2) ? null : r.GetString(2)),
                cancellationToken).ConfigureAwait(false);
            var found = new Dictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>();
            foreach (var drv in rows.GroupBy(r => r.Drv))
            {
                var outputs = new SortedDictionary<string, StorePath?>(StringComparer.Ordinal);
                foreach (var row in drv.Where(r => r.Output is not null))
                {
                    outputs[row.Output!] = row.Path is null ? null : StorePath.FromBaseName(row.Path);
                }

                found[StorePath.FromBaseName(drv.Key)] = outputs;
            }

            return found;
        }, cancellationToken);
    }

    public Task<IReadOnlySet<StorePath>> GetValidDeriversAsync(long account, StorePath output, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlySet<StorePath>>(async connection =>
        {
            using var command = Command(connection, "SELECT p.path FROM drv_outputs o JOIN paths p ON p.id = o.drv_id WHERE o.path = @o AND p.account_id = @a", null,
                ("a", account), ("o", output.BaseName));
            return new SortedSet<StorePath>(await ReadAllAsync(command, ReadStorePath, cancellationToken).ConfigureAwait(false));
        }, cancellationToken);

    public Task RegisterAsync(long account, IReadOnlyList<NewPath> paths, CancellationToken cancellationToken)
    {
        // The first of each path in the batch counts, as when they are registered one by one.
        var batch = paths.DistinctBy(p => p.Info.Path).ToList();
        if (batch.Count == 0)
        {
            return Task.CompletedTask;
        }

        // Four statements whatever the batch's size (a round trip per path would cost a millisecond each over a network).
        return WriteAsync(async (connection, transaction) =>
        {
            // Paths the view already has stay as they are: ON CONFLICT skips them, RETURNING names only the new ones
            // (also when another front door registers the same path at the same moment).
            var infos = batch.Select(p => p.Info).ToList();
            using var insert = Command(connection, """
                INSERT INTO paths (account_id, path, hash_part, nar_hash, nar_size, deriver, ca, registration_time, ultimate, self_reference, provenance, trust)
                SELECT @a, * FROM unnest(@path::text[], @hash_part::text[], @nar_hash::bytea[], @nar_size::bigint[], @deriver::text[], @ca::text[],
                                         @time::bigint[], @ultimate::boolean[], @self::boolean[], @provenance::text[], @trust::text[])
                ON CONFLICT (account_id, path) DO NOTHING
                RETURNING id, path
                """, transaction,
                ("a", account),
                ("path", BaseNames(infos.Select(i => i.Path))),
                ("hash_part", infos.Select(i => i.Path.HashPart).ToArray()),
                ("nar_hash", Digests(infos.Select(i => i.NarHash))),
                ("nar_size", infos.Select(i => i.NarSize).ToArray()),
                ("deriver", infos.Select(i => i.Deriver?.BaseName).ToArray()),
                ("ca", infos.Select(i => i.ContentAddress?.ToString()).ToArray()),
                ("time", infos.Select(i => i.RegistrationTime).ToArray()),
                ("ultimate", infos.Select(i => i.Ultimate).ToArray()),
                ("self", infos.Select(i => i.HasSelfReference).ToArray()),
                ("provenance", batch.Select(p => MetadataRows.ProvenanceText(p.Provenance)).ToArray()),
                ("trust", batch.Select(p => MetadataRows.TrustText(p.Trust)).ToArray()));
            var ids = (await ReadAllAsync(insert, r => (Id: r.GetInt64(0), Path: r.GetString(1)), cancellationToken).ConfigureAwait(false))
                .ToDictionary(r => r.Path, r => r.Id, StringComparer.Ordinal);
            var added = batch.Where(p => ids.ContainsKey(p.Info.Path.BaseName)).ToList();
            if (added.Count == 0)
            {
                return;
            }

            await InsertReferencesAsync(connection, transaction, account, added, ids, cancellationToken).ConfigureAwait(false);

            var signatures = added.SelectMany(p => p.Info.Signatures.Select(s => (Id: ids[p.Info.Path.BaseName], Sig: s))).ToList();
            if (signatures.Count > 0)
            {
                using var sigs = Command(connection, "INSERT INTO sigs (path_id, sig) SELECT * FROM unnest(@ids::bigint[], @sigs::text[]) ON CONFLICT DO NOTHING",
                    transaction, ("ids", signatures.Select(s => s.Id).ToArray()), ("sigs", signatures.Select(s => s.Sig).ToArray()));
                await sigs.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }

            var outputs = added.SelectMany(p => (p.DerivationOutputs ?? new Dictionary<string, StorePath?>())
                .Select(o => (Id: ids[p.Info.Path.BaseName], Name: o.Key, Path: o.Value?.BaseName))).ToList();
            if (outputs.Count > 0)
            {
                using var insertOutputs = Command(connection, "INSERT INTO drv_outputs (drv_id, output, path) SELECT * FROM unnest(@ids::bigint[], @names::text[], @paths::text[])",
                    transaction, ("ids", outputs.Select(o => o.Id).ToArray()), ("names", outputs.Select(o => o.Name).ToArray()),
                    ("paths", outputs.Select(o => o.Path).ToArray()));
                await insertOutputs.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }, cancellationToken);
    }

    // Each new path's references (other than itself) must be valid in the view — earlier, or in this batch; a join finds
    // them, and one that is not there makes the count fall short: then the first path naming one is refused, and the
    // whole batch with it (the transaction is not committed).
    private static async Task InsertReferencesAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, long account, List<NewPath> added,
        Dictionary<string, long> ids, CancellationToken cancellationToken)
    {
        var references = added.SelectMany(p => p.Info.OtherReferences.Select(r => (Id: ids[p.Info.Path.BaseName], Reference: r.BaseName))).ToList();
        if (references.Count == 0)
        {
            return;
        }

        using var insert = Command(connection, """
            INSERT INTO refs (referrer, reference)
            SELECT x.referrer, p.id FROM unnest(@referrers::bigint[], @references::text[]) AS x(referrer, reference)
            JOIN paths p ON p.account_id = @a AND p.path = x.reference
            """, transaction, ("a", account), ("referrers", references.Select(r => r.Id).ToArray()), ("references", references.Select(r => r.Reference).ToArray()));
        if (await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) == references.Count)
        {
            return;
        }

        using var check = Command(connection, "SELECT path FROM paths WHERE account_id = @a AND path = ANY(@paths::text[])", transaction,
            ("a", account), ("paths", references.Select(r => r.Reference).Distinct(StringComparer.Ordinal).ToArray()));
        var present = new HashSet<string>(await ReadAllAsync(check, r => r.GetString(0), cancellationToken).ConfigureAwait(false), StringComparer.Ordinal);
        var refused = added.First(p => p.Info.OtherReferences.Any(r => !present.Contains(r.BaseName)));
        throw new MissingReferencesException(refused.Info.Path, refused.Info.OtherReferences.Where(r => !present.Contains(r.BaseName)).ToList());
    }

    public async Task AddSignaturesAsync(long account, StorePath path, IReadOnlyCollection<string> signatures, CancellationToken cancellationToken)
    {
        await WriteAsync(async (connection, transaction) =>
        {
            using var command = Command(connection, """
                INSERT INTO sigs (path_id, sig)
                SELECT p.id, s.sig FROM paths p, unnest(@sigs::text[]) AS s(sig) WHERE p.account_id = @a AND p.path = @p
                ON CONFLICT DO NOTHING
                """, transaction, ("sigs", signatures.ToArray()), ("a", account), ("p", path.BaseName));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            using var notify = NotifyCommand(connection, transaction);
            await notify.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken).ConfigureAwait(false);
        PathRecordsChanged();
    }

    public Task<IReadOnlyList<GraphNode>> GetGraphAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<GraphNode>>(async connection =>
        {
            using var command = Command(connection, $"SELECT {MetadataRows.GraphColumns("string_agg")} FROM paths p WHERE p.account_id = @a", null, ("a", account));
            return await ReadAllAsync(command, MetadataRows.ReadGraphNode, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public async Task DeletePathsAsync(long account, IReadOnlyList<StorePath> paths, CancellationToken cancellationToken)
    {
        if (paths.Count == 0)
        {
            return;
        }

        // The references held by the paths that go are removed first, by a statement of their own: within one DELETE,
        // the check that nothing refers to a deleted path may run before the cascade that removes a deleted referrer's
        // references (it depends on the order the rows are met). Then a path still named by one that stays refuses the
        // whole deletion, and the order of the list does not matter.
        await WriteAsync(async (connection, transaction) =>
        {
            using var delete = Command(connection, """
                DELETE FROM refs WHERE referrer IN (SELECT id FROM paths WHERE account_id = @a AND path = ANY(@paths::text[]));
                DELETE FROM paths WHERE account_id = @a AND path = ANY(@paths::text[]);
                """, transaction, ("a", account), ("paths", BaseNames(paths)));
            await delete.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            using var notify = NotifyCommand(connection, transaction);
            await notify.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
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
            using var command = Command(connection, "SELECT DISTINCT nar_hash FROM paths WHERE nar_hash = ANY(@hashes::bytea[])", null, ("hashes", Digests(narHashes)));
            return new HashSet<NixHash>(await ReadAllAsync(command, r => Sha256(r, 0), cancellationToken).ConfigureAwait(false));
        }, cancellationToken);
    }

    public Task AddRootAsync(long account, RootKind kind, string name, StorePath path, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var command = Command(connection, """
                INSERT INTO roots (account_id, kind, name, path, created) VALUES (@a, @k, @n, @p, @t)
                ON CONFLICT (account_id, kind, name) DO UPDATE SET path = excluded.path
                """, transaction, ("a", account), ("k", MetadataRows.KindText(kind)), ("n", name), ("p", path.BaseName), ("t", MetadataRows.Now()));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<RootRecord>> GetRootsAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<RootRecord>>(async connection =>
        {
            using var command = Command(connection, "SELECT kind, name, path FROM roots WHERE account_id = @a ORDER BY kind COLLATE \"C\", name COLLATE \"C\"", null,
                ("a", account));
            return await ReadAllAsync(command, r => new RootRecord(MetadataRows.ParseKind(r.GetString(0)), r.GetString(1), StorePath.FromBaseName(r.GetString(2))),
                cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task RemoveRootAsync(long account, RootKind kind, string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var command = Command(connection, "DELETE FROM roots WHERE account_id = @a AND kind = @k AND name = @n", transaction,
                ("a", account), ("k", MetadataRows.KindText(kind)), ("n", name));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<bool> TakeTurnAsync(string name, long everySeconds, CancellationToken cancellationToken) =>
        WriteAsync<bool>(async (connection, transaction) =>
        {
            using var take = Command(connection, """
                INSERT INTO sweep_turns (name, taken) VALUES (@n, floor(extract(epoch FROM clock_timestamp()))::bigint)
                ON CONFLICT (name) DO UPDATE SET taken = excluded.taken WHERE sweep_turns.taken <= excluded.taken - @every
                RETURNING name
                """, transaction, ("n", name), ("every", everySeconds));
            return await take.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not null;
        }, cancellationToken);

    // The account's quota lock: a transaction-level advisory lock (two-key form: this namespace, the account id folded
    // into 32 bits — a collision only makes two accounts' commits wait for each other) on a pooled connection, held in
    // an open transaction. Ending the transaction releases it, and a connection closed with its transaction open (a
    // failure anywhere) rolls it back, so it never outlives its holder on the pool.
    private const int StorageQuotaLocks = 0x4b51_7461; // "KQta"

    public async Task<IAsyncDisposable?> HoldStorageQuotaAsync(long account, CancellationToken cancellationToken)
    {
        if (_readOnly)
        {
            return null;
        }

        NpgsqlConnection? connection = null;
        try
        {
            connection = await _warm.OpenAsync(cancellationToken).ConfigureAwait(false);
            var transaction = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
            using var command = Command(connection, "SELECT pg_advisory_xact_lock(@n, @k)", transaction,
                ("n", StorageQuotaLocks), ("k", (int)(account ^ (account >> 32))));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return new QuotaLockHeld(connection, transaction);
        }
        catch (Exception e)
        {
            if (connection is not null)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
            }

            if (e is NpgsqlException npgsql && AsStorageFailure(npgsql, "locked") is { } failure)
            {
                throw failure;
            }

            throw;
        }
    }

    private sealed class QuotaLockHeld(NpgsqlConnection connection, NpgsqlTransaction transaction) : IAsyncDisposable
    {
        private int _released;

        public async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0)
            {
                return;
            }

            try
            {
                await transaction.RollbackAsync(CancellationToken.None).ConfigureAwait(false); // nothing was written in it
            }
#pragma warning disable CA1031 // the connection goes either way, and its transaction (and the lock) with it
            catch (Exception)
#pragma warning restore CA1031
            {
            }
            finally
            {
                await transaction.DisposeAsync().ConfigureAwait(false);
                await connection.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    // A fixed key for the collection lock: a session-level advisory lock, shared or exclusive, which PostgreSQL queues
    // fairly (a waiting collection holds back registrations that come after it) and releases when its session ends.
    private const long CollectionLock = 0x4b696c6e_47634c6b; // "KilnGcLk"

    // The collection lock's own session: one unpooled connection with keepalives, never a pooled one (a lock left on a
    // pooled connection would outlive its holder). GcLock asks for one lock at a time per process (its own readers
    // share the one shared lock), so one session serves them all; when anything goes wrong on it the session is closed,
    // and the lock goes with it.
    private readonly SemaphoreSlim _lockSession = new(1, 1);
    private NpgsqlConnection? _lockConnection;

    public async Task<ICollectionLock?> LockAgainstCollectionAsync(bool exclusive, CancellationToken cancellationToken)
    {
        if (_readOnly)
        {
            return null;
        }

        await _lockSession.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_lockConnection is not { State: System.Data.ConnectionState.Open })
            {
                await CloseLockSessionAsync().ConfigureAwait(false);
                _lockConnection = _unpooled.CreateConnection();
                await _lockConnection.OpenAsync(cancellationToken).ConfigureAwait(false);
            }

            using var command = Command(_lockConnection, exclusive ? "SELECT pg_advisory_lock(@k)" : "SELECT pg_advisory_lock_shared(@k)", null, ("k", CollectionLock));
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return new CollectionLockHeld(this, exclusive);
        }
        catch (Exception e)
        {
            // Cancelled or failed while asking: the lock may have been granted after all, so the session goes.
            await CloseLockSessionAsync().ConfigureAwait(false);
            _lockSession.Release();
            if (e is NpgsqlException npgsql && AsStorageFailure(npgsql, "locked") is { } failure)
            {
                throw failure;
            }

            throw;
        }
    }

    private async Task CloseLockSessionAsync()
    {
        if (_lockConnection is { } connection)
        {
            _lockConnection = null;
            await connection.DisposeAsync().ConfigureAwait(false);
        }
    }

    private sealed class CollectionLockHeld(PostgresMetadataStore store, bool exclusive) : ICollectionLock
    {
        private readonly SemaphoreSlim _session = new(1, 1); // the question and the release share one connection
        private int _released;

        // Advisory locks are per database; a bigint key is listed as its high and low 32 bits, with objsubid 1.
        public async Task<bool> IsAwaitedAsync(CancellationToken cancellationToken)
        {
            await _session.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (Volatile.Read(ref _released) != 0)
                {
                    return false;
                }

                using var command = Command(store._lockConnection!, """
                    SELECT EXISTS (SELECT 1 FROM pg_locks
                                   WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
                                     AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                                     AND classid = @c::oid AND objid = @o::oid)
                    """, null, ("c", (long)(uint)(CollectionLock >> 32)), ("o", CollectionLock & 0xffff_ffff));
                command.CommandTimeout = 5; // asked while new registrations wait: a database that does not answer soon counts as a yes
                // Not cancelled midway: a query broken off could take the session, and the lock, with it.
                return (bool)(await command.ExecuteScalarAsync(CancellationToken.None).ConfigureAwait(false))!;
            }
            finally
            {
                _session.Release();
            }
        }

        public async ValueTask DisposeAsync()
        {
            if (Interlocked.Exchange(ref _released, 1) != 0)
            {
                return;
            }

            await _session.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            try
            {
                using var command = Command(store._lockConnection!, exclusive ? "SELECT pg_advisory_unlock(@k)" : "SELECT pg_advisory_unlock_shared(@k)", null, ("k", CollectionLock));
                await command.ExecuteNonQueryAsync(CancellationToken.None).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // whatever failed, closing the session releases the lock
            catch (Exception)
#pragma warning restore CA1031
            {
                await store.CloseLockSessionAsync().ConfigureAwait(false);
            }
            finally
            {
                _session.Release();
                store._lockSession.Release();
            }
        }
    }
}
