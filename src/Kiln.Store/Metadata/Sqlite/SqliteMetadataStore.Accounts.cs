using Kiln.Store.Accounts;
using Microsoft.Data.Sqlite;

namespace Kiln.Store.Metadata.Sqlite;

// IAccountMetadata: accounts, their login keys and tokens, signing keys, public caches.
public sealed partial class SqliteMetadataStore
{
    public Task<AccountRecord?> TryCreateAccountAsync(string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, "INSERT INTO accounts (name, created) VALUES ($n, $t) ON CONFLICT (name) DO NOTHING RETURNING id",
                transaction, ("$n", name), ("$t", MetadataRows.Now()));
            return await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is long id ? new AccountRecord(id, name) : null;
        }, cancellationToken);

    public Task<AccountRecord?> FindAccountAsync(string name, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, "SELECT id FROM accounts WHERE name = $n", null, ("$n", name));
            return await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is long id ? new AccountRecord(id, name) : null;
        }, cancellationToken);

    public async Task<IReadOnlyList<long>?> DeleteAccountAsync(long account, CancellationToken cancellationToken)
    {
        var deleted = await WriteAsync<IReadOnlyList<long>?>(async (connection, transaction) =>
        {
            using (var exists = Command(connection, MetadataRows.LiveAccount, transaction, ("@a", account)))
            {
                if (await exists.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is null)
                {
                    return null;
                }
            }

            using (var running = Command(connection, MetadataRows.AccountBuildRunning, transaction, ("@a", account)))
            {
                if (await running.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not null)
                {
                    throw MetadataRows.RunningBuilds();
                }
            }

            var builds = new List<long>();
            foreach (var statement in MetadataRows.DeleteAccount)
            {
                using var command = Command(connection, statement, transaction, ("@a", account));
                using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
                while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
                {
                    builds.Add(reader.GetInt64(0));
                }
            }

            return builds;
        }, cancellationToken).ConfigureAwait(false);
        if (deleted is not null)
        {
            PathRecordsChanged();
        }

        return deleted;
    }

    public Task<SshKeyRecord> AddSshKeyAsync(long account, SshPublicKey key, KeyPermissions permissions, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            ArgumentNullException.ThrowIfNull(key);
            using var insert = Command(connection, """
                INSERT INTO ssh_keys (account_id, key_type, key_blob, fingerprint, comment, permissions, created)
                VALUES ($a, $t, $b, $f, $c, $p, $n) ON CONFLICT DO NOTHING RETURNING id
                """, transaction, ("$a", account), ("$t", key.Type), ("$b", key.Blob), ("$f", key.Fingerprint), ("$c", key.Comment),
                ("$p", KeyPermissionNames.Format(permissions, " ")), ("$n", MetadataRows.Now()));
            if (await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not long id)
            {
                throw new DuplicateKeyException(key.Fingerprint);
            }

            return (await ReadOneKeyAsync(connection, transaction, "k.id = $i", cancellationToken, ("$i", id)))!;
        }, cancellationToken);

    public Task<IReadOnlyList<SshKeyRecord>> ListSshKeysAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<SshKeyRecord>>(async connection =>
        {
            using var select = Command(connection, $"SELECT {MetadataRows.KeyColumns} FROM ssh_keys k JOIN accounts a ON a.id = k.account_id WHERE k.account_id = $a ORDER BY k.id", null, ("$a", account));
            using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var keys = new List<SshKeyRecord>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                keys.Add(MetadataRows.ReadKey(reader));
            }

            return keys;
        }, cancellationToken);

    public Task<bool> RemoveSshKeyAsync(long account, string fingerprint, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // (The key's own settings go with it: a key added again later starts without them.)
            using var settings = Command(connection, "DELETE FROM settings WHERE account_id = $a AND scope = 'key:' || $f", transaction, ("$a", account), ("$f", fingerprint));
            await settings.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            using var delete = Command(connection, "DELETE FROM ssh_keys WHERE account_id = $a AND fingerprint = $f", transaction, ("$a", account), ("$f", fingerprint));
            return await delete.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<SshKeyRecord?> GetSshKeyAsync(long id, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadOneKeyAsync(connection, null, "k.id = $i", cancellationToken, ("$i", id)), cancellationToken);

    public Task<SshKeyRecord?> FindSshKeyAsync(string type, string blob, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadOneKeyAsync(connection, null, "k.key_blob = $b AND k.key_type = $t", cancellationToken, ("$b", blob), ("$t", type)), cancellationToken);

    // The one key matching the condition, with its account's name; null if none does.
    private static async Task<SshKeyRecord?> ReadOneKeyAsync(SqliteConnection connection, SqliteTransaction? transaction, string condition,
        CancellationToken cancellationToken, params (string Name, object? Value)[] parameters)
    {
        using var select = Command(connection, $"SELECT {MetadataRows.KeyColumns} FROM ssh_keys k JOIN accounts a ON a.id = k.account_id WHERE {condition}", transaction, parameters);
        using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? MetadataRows.ReadKey(reader) : null;
    }

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
                ("$e", expires), ("$n", MetadataRows.Now()));
            var id = (long)(await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
            return (await ReadOneTokenAsync(connection, transaction, "t.id = $i", cancellationToken, ("$i", id)))!;
        }, cancellationToken);

    public Task<TokenRecord?> FindTokenAsync(string tokenHash, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadOneTokenAsync(connection, null, "t.token_hash = $h", cancellationToken, ("$h", tokenHash)), cancellationToken);

    public Task<IReadOnlyList<TokenRecord>> ListTokensAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<TokenRecord>>(async connection =>
        {
            using var select = Command(connection, $"SELECT {MetadataRows.TokenColumns} FROM tokens t JOIN accounts a ON a.id = t.account_id WHERE t.account_id = $a ORDER BY t.id",
                null, ("$a", account));
            using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var tokens = new List<TokenRecord>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                tokens.Add(MetadataRows.ReadToken(reader));
            }

            return tokens;
        }, cancellationToken);

    public Task<bool> RevokeTokenAsync(long account, long id, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, "UPDATE tokens SET revoked = $n WHERE account_id = $a AND id = $i AND revoked IS NULL",
                transaction, ("$n", MetadataRows.Now()), ("$a", account), ("$i", id));
            return await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    private static async Task<TokenRecord?> ReadOneTokenAsync(SqliteConnection connection, SqliteTransaction? transaction, string condition,
        CancellationToken cancellationToken, params (string Name, object? Value)[] parameters)
    {
        using var select = Command(connection, $"SELECT {MetadataRows.TokenColumns} FROM tokens t JOIN accounts a ON a.id = t.account_id WHERE {condition}", transaction, parameters);
        using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? MetadataRows.ReadToken(reader) : null;
    }

    public Task SetSigningKeyAsync(long account, string secretKey, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var upsert = Command(connection, """
                INSERT INTO signing_keys (account_id, secret, created) VALUES ($a, $s, $n)
                ON CONFLICT (account_id) DO UPDATE SET secret = excluded.secret, created = excluded.created
                """, transaction, ("$a", account), ("$s", secretKey), ("$n", MetadataRows.Now()));
            await upsert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return true;
        }, cancellationToken);

    public Task<string?> GetSigningKeyAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, "SELECT secret FROM signing_keys WHERE account_id = $a", null, ("$a", account));
            return await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) as string;
        }, cancellationToken);
}
