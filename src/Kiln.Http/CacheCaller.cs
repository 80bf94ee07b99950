using System.Net.Http.Headers;
using System.Text;
using Kiln.Store;
using Microsoft.AspNetCore.Http;

namespace Kiln.Http;

/// <summary>
/// Who an HTTP request is, from its <c>Authorization</c> header: Basic (Nix's <c>netrc-file</c>; the token is the
/// password, or the login when the password is empty) or Bearer. Which accounts that caller may read the store decides
/// (<see cref="KilnStore.CallerForTokenAsync"/>, <see cref="KilnStore.AnonymousCallerAsync"/>). A request that offers a
/// token Kiln does not accept is refused, never treated as anonymous: a revoked token must not quietly turn into public
/// access.
/// </summary>
internal static class CacheCaller
{
    /// <summary>The request's caller; null when it offers a token that is not valid.</summary>
    public static async Task<Caller?> IdentifyAsync(HttpRequest request, KilnStore store, CancellationToken cancellationToken) =>
        OfferedToken(request.Headers.Authorization.ToString()) is { } offered
            ? await store.CallerForTokenAsync(offered, cancellationToken).ConfigureAwait(false)
            : await store.AnonymousCallerAsync(cancellationToken).ConfigureAwait(false);

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
