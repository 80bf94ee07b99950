namespace Kiln.Store.Metadata;

/// <summary>An account's upstream caches: space-separated URLs and keys, and netrc-format credentials (all may be empty).</summary>
public sealed record UpstreamSettings(string Substituters, string TrustedPublicKeys, string Netrc);

/// <summary>
/// A setting an account gave itself (<see cref="Scope"/> empty) or one of its keys (<c>key:FINGERPRINT</c>) or tokens
/// (<c>token:ID</c>): the value's canonical text, and whether lower levels may change it.
/// </summary>
public sealed record SettingRecord(string Scope, string Name, string Value, bool Final);

/// <summary>Per-account settings: upstream caches, the signing key, and the settings hierarchy's account, key and token levels.</summary>
public interface ISettingsMetadata
{
    /// <summary>The account's settings, every scope's (one query: a session start reads them all).</summary>
    Task<IReadOnlyList<SettingRecord>> GetSettingsAsync(long account, CancellationToken cancellationToken);

    /// <summary>Sets (or replaces) one setting of the account's, at <see cref="SettingRecord.Scope"/>.</summary>
    Task SetSettingAsync(long account, SettingRecord setting, CancellationToken cancellationToken);

    /// <summary>Removes one setting; false if it was not set.</summary>
    Task<bool> UnsetSettingAsync(long account, string scope, string name, CancellationToken cancellationToken);

    Task<UpstreamSettings> GetUpstreamSettingsAsync(long account, CancellationToken cancellationToken);

    /// <summary>Changes the account's upstream settings; a null field is left as it is.</summary>
    Task SetUpstreamSettingsAsync(long account, string? substituters, string? trustedPublicKeys, string? netrc, CancellationToken cancellationToken);

    /// <summary>Sets the account's signing key (Nix's secret key format), replacing any it had (sealed, through the store's port).</summary>
    Task SetSigningKeyAsync(long account, string secretKey, CancellationToken cancellationToken);

    Task<string?> GetSigningKeyAsync(long account, CancellationToken cancellationToken);

    /// <summary>
    /// The service's secret by that name (the build key, the SSH host key): the one stored, or — when there is none
    /// yet — <paramref name="candidate"/>, stored now. Of front doors starting at once, one candidate wins and all get it.
    /// </summary>
    Task<string> GetOrAddServerSecretAsync(string name, string candidate, CancellationToken cancellationToken);
}
