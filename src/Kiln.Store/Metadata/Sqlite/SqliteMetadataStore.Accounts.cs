using Kiln.Store.Accounts;
using Microsoft.Data.Sqlite;

namespace Kiln.Store.Metadata.Sqlite;

// Accounts and their login keys.
public sealed partial class SqliteMetadataStore
{
    private const string KeyColumns = "k.id, k.account_id, a.name, k.key_type, k.key_blob, k.comment, k.permissions, k.enabled, k.created";

    public Task<AccountRecord?> TryCreateAccountAsync(string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, "INSERT INTO accounts (name, created) VALUES ($n, $t) ON CONFLICT (name) DO NOTHING RETURNING id",
                transaction, ("$n", name), ("$t", Now()));
            return await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is long id ? new AccountRecord(id, name) : null;
        }, cancellationToken);

    public Task<AccountRecord?> FindAccountAsync(string name, CancellationToken cancellationToken) =>
        ReadAsync(async connection =>
        {
            using var select = Command(connection, "SELECT id FROM accounts WHERE name = $n", null, ("$n", name));
            return await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is long id ? new AccountRecord(id, name) : null;
        }, cancellationToken);

    public Task<SshKeyRecord> AddSshKeyAsync(long account, SshPublicKey key, KeyPermissions permissions, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            ArgumentNullException.ThrowIfNull(key);
            using var insert = Command(connection, """
                INSERT INTO ssh_keys (account_id, key_type, key_blob, fingerprint, comment, permissions, created)
                VALUES ($a, $t, $b, $f, $c, $p, $n) ON CONFLICT DO NOTHING RETURNING id
                """, transaction, ("$a", account), ("$t", key.Type), ("$b", key.Blob), ("$f", key.Fingerprint), ("$c", key.Comment),
                ("$p", KeyPermissionNames.Format(permissions, " ")), ("$n", Now()));
            if (await insert.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is not long id)
            {
                throw new DuplicateKeyException(key.Fingerprint);
            }

            return (await ReadOneKeyAsync(connection, transaction, "k.id = $i", cancellationToken, ("$i", id)))!;
        }, cancellationToken);

    public Task<IReadOnlyList<SshKeyRecord>> ListSshKeysAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<SshKeyRecord>>(async connection =>
        {
            using var select = Command(connection, $"SELECT {KeyColumns} FROM ssh_keys k JOIN accounts a ON a.id = k.account_id WHERE k.account_id = $a ORDER BY k.id", null, ("$a", account));
            using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            var keys = new List<SshKeyRecord>();
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                keys.Add(ReadKey(reader));
            }

            return keys;
        }, cancellationToken);

    public Task<bool> RemoveSshKeyAsync(long account, string fingerprint, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
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
        using var select = Command(connection, $"SELECT {KeyColumns} FROM ssh_keys k JOIN accounts a ON a.id = k.account_id WHERE {condition}", transaction, parameters);
        using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        return await reader.ReadAsync(cancellationToken).ConfigureAwait(false) ? ReadKey(reader) : null;
    }

    private static SshKeyRecord ReadKey(SqliteDataReader reader) => new(
        reader.GetInt64(0),
        reader.GetInt64(1),
        reader.GetString(2),
        new SshPublicKey(reader.GetString(3), reader.GetString(4), reader.GetString(5)),
        KeyPermissionNames.Parse(reader.GetString(6)),
        reader.GetInt64(7) != 0,
        reader.GetInt64(8));
}
