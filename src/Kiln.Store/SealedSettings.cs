using Kiln.Store.Metadata;

namespace Kiln.Store;

/// <summary>
/// The settings port as the rest of Kiln sees it: the provider's, with accounts' netrc and signing keys sealed on the
/// way in and opened on the way out (<see cref="CredentialSeal"/>), so no provider and no caller handles sealing.
/// </summary>
internal sealed class SealedSettings(ISettingsMetadata inner, Lazy<CredentialSeal> seal) : ISettingsMetadata
{
    public Task<IReadOnlyList<SettingRecord>> GetSettingsAsync(long account, CancellationToken cancellationToken) => inner.GetSettingsAsync(account, cancellationToken);

    public Task SetSettingAsync(long account, SettingRecord setting, CancellationToken cancellationToken) => inner.SetSettingAsync(account, setting, cancellationToken);

    public Task<bool> UnsetSettingAsync(long account, string scope, string name, CancellationToken cancellationToken) =>
        inner.UnsetSettingAsync(account, scope, name, cancellationToken);

    public async Task<UpstreamSettings> GetUpstreamSettingsAsync(long account, CancellationToken cancellationToken)
    {
        var stored = await inner.GetUpstreamSettingsAsync(account, cancellationToken).ConfigureAwait(false);
        return stored.Netrc.Length == 0 ? stored : stored with { Netrc = seal.Value.Open(stored.Netrc, account) };
    }

    public Task SetUpstreamSettingsAsync(long account, string? substituters, string? trustedPublicKeys, string? netrc, CancellationToken cancellationToken) =>
        inner.SetUpstreamSettingsAsync(account, substituters, trustedPublicKeys, netrc is null ? null : seal.Value.Seal(netrc, account), cancellationToken);

    public Task SetSigningKeyAsync(long account, string secretKey, CancellationToken cancellationToken) =>
        inner.SetSigningKeyAsync(account, seal.Value.Seal(secretKey, account), cancellationToken);

    public async Task<string?> GetSigningKeyAsync(long account, CancellationToken cancellationToken) =>
        await inner.GetSigningKeyAsync(account, cancellationToken).ConfigureAwait(false) is { } stored ? seal.Value.Open(stored, account) : null;

    public Task<string> GetOrAddServerSecretAsync(string name, string candidate, CancellationToken cancellationToken) =>
        inner.GetOrAddServerSecretAsync(name, candidate, cancellationToken);
}
