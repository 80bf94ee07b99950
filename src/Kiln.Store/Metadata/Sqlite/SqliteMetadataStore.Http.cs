using Kiln.Nix.Hashing;
using Kiln.Store.Accounts;
using Microsoft.Data.Sqlite;

namespace Kiln.Store.Metadata.Sqlite;

// What the HTTP binary cache needs: public accounts, access tokens, account signing keys, and lookups over the
// views a request may read (its token's account, or every public account).
public sealed partial class SqliteMetadataStore
{
    private const string TokenColumns = "t.id, t.account_id, a.name, t.description, t.permissions, t.expires, t.revoked, t.created";

    public Task<bool> SetPublicCacheAsync(long account, bool isPublic, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, "UPDATE accounts SET public_cache = $p WHERE id = $a", transaction, ("$p", isPublic ? 1 : 0), ("$a", account));
            return await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<IReadOnlyList<long>> GetPublicCacheAccountsAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<long>>(async connection =>
        {
            using var select = Command(connection, "SELECT id FROM accounts WHERE public_cache != 0 ORDER BY id");
            using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var ids = new List<long>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                ids.Add(reader.GetInt64(0));
            }

            return ids;
        }, cancellationToken);

    public Task<TokenRecord> AddTokenAsync(long account, string tokenHash, string description, KeyPermissions permissions, long? expires, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, """
                INSERT INTO tokens (account_id, token_hash, description, permissions, expires, created)
                VALUES ($a, $h, $d, $p, $e, $n) RETURNING id
                """, transaction, ("$a", account), ("$h", tokenHash), ("$d", description), ("$p", KeyPermissionNames.Format(permissions, " ")),
                ("$e", expires), ("$n", Now()));
            var id = (long)(await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
            return (await ReadOneTokenAsync(connection, transaction, "t.id = $i", cancellationToken, ("$i", id)))!;
        }, cancellationToken);

    public Task<TokenRecord?> FindTokenAsync(string tokenHash, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadOneTokenAsync(connection, null, "t.token_hash = $h", cancellationToken, ("$h", tokenHash)), cancellationToken);

    public Task<IReadOnlyList<TokenRecord>> ListTokensAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<TokenRecord>>(async connection =>
        {
            using var select = Command(connection, $"SELECT {TokenColumns} FROM tokens t JOIN accounts a ON a.id = t.account_id WHERE t.account_id = $a ORDER BY t.id",
                null, ("$a", account));
            using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var tokens = new List<TokenRecord>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                tokens.Add(ReadToken(reader));
            }

            return tokens;
        }, cancellationToken);

    public Task<bool> RevokeTokenAsync(long account, long id, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, "UPDATE tokens SET revoked = $n WHERE account_id = $a AND id = $i AND revoked IS NULL",
                transaction, ("$n", Now()), ("$a", account), ("$i", id));
            return await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    private static async Task<TokenRecord?> ReadOneTokenAsync(SqliteConnection connection, SqliteTransaction? transaction, string condition,
        CancellationToken cancellationToken, params (string Name, object? Value)[] parameters)
    {
        using var select = Command(connection, $"SELECT {TokenColumns} FROM tokens t JOIN accounts a ON a.id = t.account_id WHERE {condition}", transaction, parameters);
        using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? ReadToken(reader) : null;
    }

    private static TokenRecord ReadToken(SqliteDataReader reader) => new(
        reader.GetInt64(0),
        reader.GetInt64(1),
        reader.GetString(2),
        reader.GetString(3),
        KeyPermissionNames.Parse(reader.GetString(4)),
        reader.IsDBNull(5) ? null : reader.GetInt64(5),
        reader.IsDBNull(6) ? null : reader.GetInt64(6),
        reader.GetInt64(7));

    public Task SetSigningKeyAsync(long account, string secretKey, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var upsert = Command(connection, """
                INSERT INTO signing_keys (account_id, secret, created) VALUES ($a, $s, $n)
                ON CONFLICT (account_id) DO UPDATE SET secret = excluded.secret, created = excluded.created
                """, transaction, ("$a", account), ("$s", secretKey), ("$n", Now()));
            await upsert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return true;
        }, cancellationToken);

    public Task<string?> GetSigningKeyAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, "SELECT secret FROM signing_keys WHERE account_id = $a", null, ("$a", account));
            return await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) as string;
        }, cancellationToken);

    private static readonly PreparedQuery HashPartQuery = new($"""
        SELECT {PathColumns}, p.account_id
        FROM json_each($accounts) j CROSS JOIN paths p ON p.account_id = j.value AND p.hash_part = $hash
        ORDER BY j.key
        LIMIT 1
        """, "$accounts", "$hash");

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
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? (reader.GetInt64(12), ReadPath(reader)) : null;
        }, cancellationToken);
    }

    private static readonly PreparedQuery NarHashQuery = new("""
        SELECT p.nar_size FROM paths p WHERE p.nar_hash = $hash AND p.account_id IN (SELECT value FROM json_each($accounts)) LIMIT 1
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
                """, transaction, ("$f", file), ("$h", narHash.Digest.ToArray()), ("$c", compression), ("$s", fileSize), ("$n", Now()));
            await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return true;
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

    public Task<UpstreamSettings> GetUpstreamSettingsAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, "SELECT substituters, trusted_public_keys, netrc FROM accounts WHERE id = $a", null, ("$a", account));
            using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            return await reader.ReadAsync(cancellationToken).ConfigureAwait(false)
                ? new UpstreamSettings(reader.GetString(0), reader.GetString(1), reader.GetString(2))
                : new UpstreamSettings("", "", "");
        }, cancellationToken);

    public Task SetUpstreamSettingsAsync(long account, string? substituters, string? trustedPublicKeys, string? netrc, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, """
                UPDATE accounts SET substituters = coalesce($s, substituters), trusted_public_keys = coalesce($k, trusted_public_keys),
                    netrc = coalesce($n, netrc) WHERE id = $a
                """, transaction, ("$s", substituters), ("$k", trustedPublicKeys), ("$n", netrc), ("$a", account));
            await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<IReadOnlyList<string>> RemoveNarFilesAsync(IReadOnlyCollection<NixHash> narHashes, CancellationToken cancellationToken) =>
        WriteAsync<IReadOnlyList<string>>(async (connection, transaction) =>
        {
            using var delete = Command(connection, "DELETE FROM nar_files WHERE nar_hash IN (SELECT unhex(value) FROM json_each($hashes)) RETURNING file",
                transaction, ("$hashes", JsonArray(narHashes.Select(h => h.ToBase16()))));
            using var reader = await delete.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var files = new List<string>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                files.Add(reader.GetString(0));
            }

            return files;
        }, cancellationToken);
}
