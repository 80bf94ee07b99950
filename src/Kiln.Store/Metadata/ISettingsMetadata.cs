namespace Kiln.Store.Metadata;

/// <summary>An account's upstream caches: space-separated URLs and keys, and netrc-format credentials (all may be empty).</summary>
public sealed record UpstreamSettings(string Substituters, string TrustedPublicKeys, string Netrc);

/// <summary>Per-account settings (upstream caches now; the settings hierarchy builds on this port).</summary>
public interface ISettingsMetadata
{
    Task<UpstreamSettings> GetUpstreamSettingsAsync(long account, CancellationToken cancellationToken);

    /// <summary>Changes the account's upstream settings; a null field is left as it is.</summary>
    Task SetUpstreamSettingsAsync(long account, string? substituters, string? trustedPublicKeys, string? netrc, CancellationToken cancellationToken);

    /// <summary>
    /// The service's secret by that name (the build key, the SSH host key): the one stored, or — when there is none
    /// yet — <paramref name="candidate"/>, stored now. Of front doors starting at once, one candidate wins and all get it.
    /// </summary>
    Task<string> GetOrAddServerSecretAsync(string name, string candidate, CancellationToken cancellationToken);
}
