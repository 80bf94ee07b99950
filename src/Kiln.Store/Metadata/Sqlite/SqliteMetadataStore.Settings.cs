namespace Kiln.Store.Metadata.Sqlite;

// ISettingsMetadata: per-account settings (upstream caches).
public sealed partial class SqliteMetadataStore
{
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

    public Task<IReadOnlyList<SettingRecord>> GetSettingsAsync(long account, CancellationToken cancellationToken) =>
        ReadAsync<IReadOnlyList<SettingRecord>>(async connection =>
            await ReadRowsAsync(Command(connection, MetadataRows.Settings, null, ("@a", account)), MetadataRows.ReadSetting, cancellationToken).ConfigureAwait(false),
            cancellationToken);

    public Task SetSettingAsync(long account, SettingRecord setting, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(setting);
        return WriteAsync(async (connection, transaction) =>
        {
            using var set = Command(connection, MetadataRows.SetSetting, transaction,
                ("@a", account), ("@s", setting.Scope), ("@n", setting.Name), ("@v", setting.Value), ("@f", setting.Final));
            await set.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
        }, cancellationToken);
    }

    public Task<bool> UnsetSettingAsync(long account, string scope, string name, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var unset = Command(connection, MetadataRows.UnsetSetting, transaction, ("@a", account), ("@s", scope), ("@n", name));
            return await unset.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) > 0;
        }, cancellationToken);

    public Task<string> GetOrAddServerSecretAsync(string name, string candidate, CancellationToken cancellationToken) =>
        WriteAsync(async (connection, transaction) =>
        {
            using var insert = Command(connection, MetadataRows.AddServerSecret, transaction, ("@n", name), ("@s", candidate), ("@t", MetadataRows.Now()));
            await insert.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            using var select = Command(connection, "SELECT secret FROM server_secrets WHERE name = @n", transaction, ("@n", name));
            return (string)(await select.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }, cancellationToken);
}
