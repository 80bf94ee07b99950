using Kiln.Store;
using Kiln.Store.Metadata;

namespace Kiln.Accounts;

/// <summary>
/// The store's account policies from the settings hierarchy: <c>max-storage</c> and <c>retention</c> at the server's
/// level, then the account's (neither is a key's or a session's). Read at each use: an operator's change holds at once.
/// </summary>
public sealed class SettingsAccountPolicy(ISettingsMetadata settings, IReadOnlyDictionary<string, long> server) : IAccountPolicy
{
    public async Task<long> MaxStorageAsync(long account, CancellationToken cancellationToken) =>
        await ValueAsync(account, Settings.MaxStorage, cancellationToken).ConfigureAwait(false);

    public async Task<TimeSpan> RetentionAsync(long account, CancellationToken cancellationToken) =>
        TimeSpan.FromSeconds(await ValueAsync(account, Settings.Retention, cancellationToken).ConfigureAwait(false));

    public async Task<int> RetainedBuildsAsync(long account, CancellationToken cancellationToken) =>
        (int)Math.Min(int.MaxValue, await ValueAsync(account, Settings.RetentionBuilds, cancellationToken).ConfigureAwait(false));

    private async Task<long> ValueAsync(long account, SettingDefinition setting, CancellationToken cancellationToken)
    {
        var stored = await settings.GetSettingsAsync(account, cancellationToken).ConfigureAwait(false);
        return Settings.ByName(Settings.Resolve(server, stored, null, null))[setting.Name];
    }
}
