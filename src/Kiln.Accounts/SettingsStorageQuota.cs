using Kiln.Store;
using Kiln.Store.Metadata;

namespace Kiln.Accounts;

/// <summary>
/// The store's storage quotas from the settings hierarchy: <c>max-storage</c> at the server's level, tightened by
/// the account's (a quota is not a key's or a session's). Read at each check: an operator's change holds at once.
/// </summary>
public sealed class SettingsStorageQuota(ISettingsMetadata settings, IReadOnlyDictionary<string, long> server) : IStorageQuota
{
    public async Task<long> MaxStorageAsync(long account, CancellationToken cancellationToken)
    {
        var stored = await settings.GetSettingsAsync(account, cancellationToken).ConfigureAwait(false);
        return stored.Count == 0 && server.GetValueOrDefault(Settings.MaxStorage.Name) == 0
            ? 0
            : Settings.ByName(Settings.Resolve(server, stored, null, null))[Settings.MaxStorage.Name];
    }
}
