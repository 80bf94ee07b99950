using Kiln.Nix.Hashing;

namespace Kiln.Store.Metadata.Sqlite;

// IPathMetadata, continued: lookups over several views (a request's readable accounts) and kept compressed NAR files.
public sealed partial class SqliteMetadataStore
{
    // Every account's record of the hash part: the choice between them is made below.
    // An ORDER BY here would make SQLite build a temporary B-tree, with its own page cache, on every call: fresh memory
    // for each narinfo asked for the first time, which measured three times the cost of the lookup itself.
    private static readonly PreparedQuery HashPartQuery = new($"""
        SELECT {PathColumns}, p.account_id, j.key
        FROM json_each($accounts) j CROSS JOIN paths p ON p.account_id = j.value AND p.hash_part = $hash
        """, "$accounts", "$hash");

    // Several accounts may hold the path (all public caches, for an anonymous request): a globally trusted record
    // comes before the others, so a tenant cannot shadow a trusted path with an unsigned one of the same name (see
    // StoreView.GetRecordsAsync); among equals, the accounts' order.
    public Task<(long Account, PathRecord Record)?> FindPathByHashPartAsync(IReadOnlyList<long> accounts, string hashPart, CancellationToken cancellationToken)
    {
        if (accounts.Count == 0)
        {
            return Task.FromResult<(long, PathRecord)?>(null);
        }

        // Every narinfo request lands here: prepared once per connection, like the path query.
        return ReadPreparedAsync<(long, PathRecord)?>(HashPartQuery, async command =>
        {
            command.Parameters["$accounts"].Value = "[" + string.Join(',', accounts) + "]";
            command.Parameters["$hash"].Value = hashPart;
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            // A row is read whole only when it leads so far (a losing row met after the leader is never parsed).
            (long Account, PathRecord Record)? best = null;
            HashPartRank bestRank = default;
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                var rank = new HashPartRank(MetadataRows.ParseTrust(reader.GetString(9)).IsGlobal(), reader.GetInt64(13), reader.GetString(0));
                if (best is null || rank.Outranks(bestRank))
                {
                    best = (reader.GetInt64(12), MetadataRows.ReadPath(reader));
                    bestRank = rank;
                }
            }

            return best;
        }, cancellationToken);
    }

    // A record's claim to answer for a hash part: globally trusted first, then the account's place in the list asked
    // for, then (two names with one hash part in one account) the name.
    private readonly record struct HashPartRank(bool Global, long Key, string Path)
    {
        public bool Outranks(HashPartRank other) =>
            Global != other.Global ? Global
            : Key != other.Key ? Key < other.Key
            : string.CompareOrdinal(Path, other.Path) < 0;
    }

    // A join, not "account_id IN (SELECT …)": SQLite would fill a temporary B-tree with the list on every call.
    private static readonly PreparedQuery NarHashQuery = new("""
        SELECT p.nar_size FROM paths p CROSS JOIN json_each($accounts) j ON p.account_id = j.value WHERE p.nar_hash = $hash LIMIT 1
        """, "$accounts", "$hash");

    public Task<long?> FindNarAsync(IReadOnlyList<long> accounts, NixHash narHash, CancellationToken cancellationToken)
    {
        if (accounts.Count == 0)
        {
            return Task.FromResult<long?>(null);
        }

        return ReadPreparedAsync(NarHashQuery, async command =>
        {
            command.Parameters["$accounts"].Value = "[" + string.Join(',', accounts) + "]";
            command.Parameters["$hash"].Value = narHash.Digest.ToArray();
            return await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) as long?;
        }, cancellationToken);
    }

    public Task AddNarFileAsync(string file, NixHash narHash, string compression, long fileSize, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, """
                INSERT INTO nar_files (file, nar_hash, compression, file_size, created) VALUES ($f, $h, $c, $s, $n) ON CONFLICT (file) DO NOTHING
                """, transaction, ("$f", file), ("$h", narHash.Digest.ToArray()), ("$c", compression), ("$s", fileSize), ("$n", MetadataRows.Now()));
            await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return true;
        }, cancellationToken);

    public Task<IReadOnlySet<string>> FindNarFilesAsync(IReadOnlyCollection<string> files, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlySet<string>>(async connection =>
        {
            using var select = Command(connection, "SELECT f.file FROM json_each($files) j CROSS JOIN nar_files f ON f.file = j.value", null,
                ("$files", MetadataRows.JsonArray(files)));
            return new HashSet<string>(await ReadAllAsync(select, r => r.GetString(0), cancellationToken).ConfigureAwait(false), StringComparer.Ordinal);
        }, cancellationToken);

    public Task<(NixHash NarHash, string Compression)?> FindNarFileAsync(string file, CancellationToken cancellationToken) =>
        ReadAsync<(NixHash, string)?>(async connection =>
        {
            using var select = Command(connection, "SELECT nar_hash, compression FROM nar_files WHERE file = $f", null, ("$f", file));
            using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false)
                ? (new NixHash(NixHashAlgorithm.Sha256, (byte[])reader.GetValue(0)), reader.GetString(1))
                : null;
        }, cancellationToken);

    public Task<IReadOnlyList<string>> RemoveNarFilesAsync(IReadOnlyCollection<NixHash> narHashes, CancellationToken cancellationToken) =>
        WriteAsync<IReadOnlyList<string>>(async (connection, transaction) =>
        {
            using var delete = Command(connection, "DELETE FROM nar_files WHERE nar_hash IN (SELECT unhex(value) FROM json_each($hashes)) RETURNING file",
                transaction, ("$hashes", MetadataRows.JsonArray(narHashes.Select(h => h.ToBase16()))));
            using var reader = await delete.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var files = new List<string>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                files.Add(reader.GetString(0));
            }

            return files;
        }, cancellationToken);

    public Task<bool> TakeTurnAsync(string name, long everySeconds, CancellationToken cancellationToken) =>
        WriteAsync<bool>(async (connection, transaction) =>
        {
            using var take = Command(connection, """
                INSERT INTO sweep_turns (name, taken) VALUES ($n, CAST(strftime('%s', 'now') AS INTEGER))
                ON CONFLICT (name) DO UPDATE SET taken = excluded.taken WHERE sweep_turns.taken <= excluded.taken - $every
                RETURNING name
                """, transaction, ("$n", name), ("$every", everySeconds));
            return await take.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not null;
        }, cancellationToken);

    // The server is the one process writing this database: its lock per account is the whole of it.
    public Task<IAsyncDisposable?> HoldStorageQuotaAsync(long account, CancellationToken cancellationToken) => Task.FromResult<IAsyncDisposable?>(null);

    // The server is the one process writing this database ('kiln store gc' runs with it stopped).
    public Task<ICollectionLock?> LockAgainstCollectionAsync(bool exclusive, CancellationToken cancellationToken) => Task.FromResult<ICollectionLock?>(null);
}
