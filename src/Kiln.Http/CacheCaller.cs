using System.Net.Http.Headers;
using System.Text;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Http;

namespace Kiln.Http;

/// <summary>
/// Who an HTTP request is: a token's account (reading and, with <c>store:write</c>, writing its view) or anonymous
/// (reading the views of accounts made public). A request that offers a token Kiln does not accept is refused, never
/// treated as anonymous: a revoked token must not quietly turn into public access.
/// </summary>
internal sealed record CacheCaller(IReadOnlyList<long> ReadableAccounts, TokenRecord? Token)
{
    public bool CanWrite => Token is { } token && token.Permissions.HasFlag(KeyPermissions.StoreWrite);

    /// <summary>The readable accounts as one key (what cached answers are kept under).</summary>
    public string View => _view ??= string.Join(',', ReadableAccounts);

    private string? _view;

    /// <summary>
    /// The caller from the request's <c>Authorization</c> header: Basic (Nix's <c>netrc-file</c>; the token is the password,
    /// or the login when the password is empty) or Bearer. Null when a token was offered and is not valid.
    /// </summary>
    public static async Task<CacheCaller?> IdentifyAsync(HttpRequest request, IMetadataStore metadata, Func<CancellationToken, Task<IReadOnlyList<long>>> publicAccounts,
        CancellationToken cancellationToken)
    {
        var offered = OfferedToken(request.Headers.Authorization.ToString());
        if (offered is null)
        {
            return new CacheCaller(await publicAccounts(cancellationToken).ConfigureAwait(false), null);
        }

        if (!AccessToken.LooksValid(offered))
        {
            return null;
        }

        var token = await metadata.FindTokenAsync(AccessToken.Hash(offered), cancellationToken).ConfigureAwait(false);
        if (token is null || !token.IsValidAt(DateTimeOffset.UtcNow.ToUnixTimeSeconds())
            || (token.Permissions & (KeyPermissions.StoreRead | KeyPermissions.StoreWrite)) == 0)
        {
            return null;
        }

        // A write-only token still sees its own view: Nix's uploader asks what is there before it uploads.
        return new CacheCaller([token.AccountId], token);
    }

    // The token in an Authorization header, "" for a malformed one (refused), null when there is none.
    private static string? OfferedToken(string header)
    {
        if (header.Length == 0)
        {
            return null;
        }

        if (!AuthenticationHeaderValue.TryParse(header, out var value) || value.Parameter is null)
        {
            return "";
        }

        if (value.Scheme.Equals("Bearer", StringComparison.OrdinalIgnoreCase))
        {
            return value.Parameter;
        }

        if (!value.Scheme.Equals("Basic", StringComparison.OrdinalIgnoreCase))
        {
            return "";
        }

        try
        {
            var pair = Encoding.UTF8.GetString(Convert.FromBase64String(value.Parameter));
            var colon = pair.IndexOf(':', StringComparison.Ordinal);
            if (colon < 0)
            {
                return "";
            }

            var password = pair[(colon + 1)..];
            return password.Length > 0 ? password : pair[..colon];
        }
        catch (FormatException)
        {
            return "";
        }
    }
}
