using Kiln.Store.Accounts;
using Npgsql;

namespace Kiln.Store.Metadata.Postgres;

// IAccountMetadata: accounts, their login keys and tokens, signing keys, public caches.
public sealed partial class PostgresMetadataStore
{
    public async Task<long> GetOrCreateAccountAsync(string name, CancellationToken cancellationToken)
    {
        // Every session starts here: an account that exists costs a read, not a write transaction.
        var existing = await FindAccountAsync(name, cancellationToken).ConfigureAwait(false);
        return existing?.Id ?? await WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, "INSERT INTO accounts (name, created) VALUES (@n, @t) ON CONFLICT (name) DO NOTHING", transaction,
                ("n", name), ("t", MetadataRows.Now()));
            await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            using var select = Command(connection, "SELECT id FROM accounts WHERE name = @n", transaction, ("n", name));
            return (long)(await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }, cancellationToken).ConfigureAwait(false);
    }

    public Task<IReadOnlyList<AccountRecord>> ListAccountsAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<AccountRecord>>(async connection =>
        {
            using var command = Command(connection, "SELECT id, name FROM accounts ORDER BY id");
            return await ReadAllAsync(command, r => new AccountRecord(r.GetInt64(0), r.GetString(1)), cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<AccountRecord?> TryCreateAccountAsync(string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, "INSERT INTO accounts (name, created) VALUES (@n, @t) ON CONFLICT (name) DO NOTHING RETURNING id",
                transaction, ("n", name), ("t", MetadataRows.Now()));
            return await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is long id ? new AccountRecord(id, name) : null;
        }, cancellationToken);

    public Task<AccountRecord?> FindAccountAsync(string name, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, "SELECT id FROM accounts WHERE name = @n", null, ("n", name));
            return await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is long id ? new AccountRecord(id, name) : null;
        }, cancellationToken);

    public async Task<IReadOnlyList<long>?> DeleteAccountAsync(long account, CancellationToken cancellationToken)
    {
        var deleted = await WriteAsync<IReadOnlyList<long>?>(async (connection, transaction) =>
        {
            // (The account's row locked: a second deletion, or a build starting for it, waits for this one.)
            using (var exists = Command(connection, MetadataRows.LiveAccount + " FOR UPDATE", transaction, ("a", account)))
            {
                if (await exists.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is null)
                {
                    return null;
                }
            }

            using (var running = Command(connection, MetadataRows.AccountBuildRunning, transaction, ("a", account)))
            {
                if (await running.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not null)
                {
                    throw MetadataRows.RunningBuilds();
                }
            }

            var builds = new List<long>();
            // (Its sessions' published temp roots too: they protect nothing of a view that is gone.)
            foreach (var statement in MetadataRows.DeleteAccount.Prepend("DELETE FROM temp_roots WHERE account_id = @a"))
            {
                using var command = Command(connection, statement, transaction, ("a", account));
                using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
                while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
                {
                    builds.Add(reader.GetInt64(0));
                }
            }

            using var notify = NotifyCommand(connection, transaction);
            await notify.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return builds;
        }, cancellationToken).ConfigureAwait(false);
        if (deleted is not null)
        {
            PathRecordsChanged();
        }

        return deleted;
    }

    public Task<SshKeyRecord> AddSshKeyAsync(long account, SshPublicKey key, KeyPermissions permissions, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        return WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, """
                INSERT INTO ssh_keys (account_id, key_type, key_blob, fingerprint, comment, permissions, created)
                VALUES (@a, @t, @b, @f, @c, @p, @n) ON CONFLICT DO NOTHING RETURNING id
                """, transaction, ("a", account), ("t", key.Type), ("b", key.Blob), ("f", key.Fingerprint), ("c", key.Comment),
                ("p", KeyPermissionNames.Format(permissions, " ")), ("n", MetadataRows.Now()));
            if (await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not long id)
            {
                throw new DuplicateKeyException(key.Fingerprint);
            }

            return (await ReadOneKeyAsync(connection, transaction, "k.id = @i", cancellationToken, ("i", id)).ConfigureAwait(false))!;
        }, cancellationToken);
    }

    public Task<IReadOnlyList<SshKeyRecord>> ListSshKeysAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<SshKeyRecord>>(async connection =>
        {
            using var select = Command(connection, $"SELECT {MetadataRows.KeyColumns} FROM ssh_keys k JOIN accounts a ON a.id = k.account_id WHERE k.account_id = @a ORDER BY k.id",
                null, ("a", account));
            return await ReadAllAsync(select, MetadataRows.ReadKey, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<bool> RemoveSshKeyAsync(long account, string fingerprint, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            // (The key's own settings go with it: a key added again later starts without them.)
            using var settings = Command(connection, "DELETE FROM settings WHERE account_id = @a AND scope = 'key:' || @f", transaction, ("a", account), ("f", fingerprint));
            await settings.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            using var delete = Command(connection, "DELETE FROM ssh_keys WHERE account_id = @a AND fingerprint = @f", transaction, ("a", account), ("f", fingerprint));
            return await delete.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<SshKeyRecord?> GetSshKeyAsync(long id, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadOneKeyAsync(connection, null, "k.id = @i", cancellationToken, ("i", id)), cancellationToken);

    public Task<SshKeyRecord?> FindSshKeyAsync(string type, string blob, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadOneKeyAsync(connection, null, "k.key_blob = @b AND k.key_type = @t", cancellationToken, ("b", blob), ("t", type)), cancellationToken);

    private static async Task<SshKeyRecord?> ReadOneKeyAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string condition,
        CancellationToken cancellationToken, params (string Name, object? Value)[] parameters)
    {
        using var select = Command(connection, $"SELECT {MetadataRows.KeyColumns} FROM ssh_keys k JOIN accounts a ON a.id = k.account_id WHERE {condition}",
            transaction, parameters);
        return await ReadOneAsync(select, MetadataRows.ReadKey, cancellationToken).ConfigureAwait(false);
    }

    public Task<bool> SetPublicCacheAsync(long account, bool isPublic, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, "UPDATE accounts SET public_cache = @p WHERE id = @a", transaction, ("p", isPublic), ("a", account));
            return await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<IReadOnlyList<long>> GetPublicCacheAccountsAsync(CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<long>>(async connection =>
        {
            using var select = Command(connection, "SELECT id FROM accounts WHERE public_cache ORDER BY id");
            return await ReadAllAsync(select, r => r.GetInt64(0), cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<TokenRecord> AddTokenAsync(long account, string tokenHash, string description, KeyPermissions permissions, long? expires, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, """
                INSERT INTO tokens (account_id, token_hash, description, permissions, expires, created)
                VALUES (@a, @h, @d, @p, @e::bigint, @n) RETURNING id
                """, transaction, ("a", account), ("h", tokenHash), ("d", description), ("p", KeyPermissionNames.Format(permissions, " ")),
                ("e", expires), ("n", MetadataRows.Now()));
            var id = (long)(await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
            return (await ReadOneTokenAsync(connection, transaction, "t.id = @i", cancellationToken, ("i", id)).ConfigureAwait(false))!;
        }, cancellationToken);

    public Task<TokenRecord?> FindTokenAsync(string tokenHash, CancellationToken cancellationToken) =>
        ReadAsync(connection => ReadOneTokenAsync(connection, null, "t.token_hash = @h", cancellationToken, ("h", tokenHash)), cancellationToken);

    public Task<IReadOnlyList<TokenRecord>> ListTokensAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<TokenRecord>>(async connection =>
        {
            using var select = Command(connection, $"SELECT {MetadataRows.TokenColumns} FROM tokens t JOIN accounts a ON a.id = t.account_id WHERE t.account_id = @a ORDER BY t.id",
                null, ("a", account));
            return await ReadAllAsync(select, MetadataRows.ReadToken, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<bool> RevokeTokenAsync(long account, long id, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, "UPDATE tokens SET revoked = @n WHERE account_id = @a AND id = @i AND revoked IS NULL",
                transaction, ("n", MetadataRows.Now()), ("a", account), ("i", id));
            return await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    private static async Task<TokenRecord?> ReadOneTokenAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string condition,
        CancellationToken cancellationToken, params (string Name, object? Value)[] parameters)
    {
        using var select = Command(connection, $"SELECT {MetadataRows.TokenColumns} FROM tokens t JOIN accounts a ON a.id = t.account_id WHERE {condition}",
            transaction, parameters);
        return await ReadOneAsync(select, MetadataRows.ReadToken, cancellationToken).ConfigureAwait(false);
    }

    public Task SetSigningKeyAsync(long account, string secretKey, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var upsert = Command(connection, """
                INSERT INTO signing_keys (account_id, secret, created) VALUES (@a, @s, @n)
                ON CONFLICT (account_id) DO UPDATE SET secret = excluded.secret, created = excluded.created
                """, transaction, ("a", account), ("s", secretKey), ("n", MetadataRows.Now()));
            await upsert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<string?> GetSigningKeyAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, "SELECT secret FROM signing_keys WHERE account_id = @a", null, ("a", account));
            return await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) as string;
        }, cancellationToken);

    // ISettingsMetadata: per-account settings (upstream caches).
    public Task<IReadOnlyList<SettingRecord>> GetSettingsAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<SettingRecord>>(async connection =>
        {
            using var select = Command(connection, MetadataRows.Settings, null, ("a", account));
            return await ReadAllAsync(select, MetadataRows.ReadSetting, cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task SetSettingAsync(long account, SettingRecord setting, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(setting);
        return WriteAsync(async (connection, transaction) =>
        {
            using var set = Command(connection, MetadataRows.SetSetting, transaction,
                ("a", account), ("s", setting.Scope), ("n", setting.Name), ("v", setting.Value), ("f", setting.Final));
            await set.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }

    public Task<bool> UnsetSettingAsync(long account, string scope, string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var unset = Command(connection, MetadataRows.UnsetSetting, transaction, ("a", account), ("s", scope), ("n", name));
            return await unset.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<UpstreamSettings> GetUpstreamSettingsAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, "SELECT substituters, trusted_public_keys, netrc FROM accounts WHERE id = @a", null, ("a", account));
            return await ReadOneAsync(select, r => new UpstreamSettings(r.GetString(0), r.GetString(1), r.GetString(2)), cancellationToken).ConfigureAwait(false)
                ?? new UpstreamSettings("", "", "");
        }, cancellationToken);

    public Task SetUpstreamSettingsAsync(long account, string? substituters, string? trustedPublicKeys, string? netrc, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var update = Command(connection, """
                UPDATE accounts SET substituters = coalesce(@s::text, substituters), trusted_public_keys = coalesce(@k::text, trusted_public_keys),
                    netrc = coalesce(@n::text, netrc) WHERE id = @a
                """, transaction, ("s", substituters), ("k", trustedPublicKeys), ("n", netrc), ("a", account));
            await update.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);

    public Task<string> GetOrAddServerSecretAsync(string name, string candidate, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, MetadataRows.AddServerSecret, transaction, ("n", name), ("s", candidate), ("t", MetadataRows.Now()));
            await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            using var select = Command(connection, "SELECT secret FROM server_secrets WHERE name = @n", transaction, ("n", name));
            return (string)(await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }, cancellationToken);
}
