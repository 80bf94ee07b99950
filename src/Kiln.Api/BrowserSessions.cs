using System.Security.Cryptography;
using System.Text;
using Kiln.Store;
using Microsoft.AspNetCore.Http;

namespace Kiln.Api;

/// <summary>
/// A browser's session (the dashboard's): the token it logged in with, kept in an HttpOnly, SameSite=Strict cookie, so
/// page scripts never see it and other sites' pages never send it. The API honours the cookie like a Bearer token; any
/// request that changes something must also carry the session's CSRF token (a form field, or the
/// <see cref="CsrfHeader"/> header from the page's scripts): an HMAC of the session's token under a key of this
/// installation, which a page of another origin cannot read or compute.
/// </summary>
public sealed class BrowserSessions(KilnStore store, Uri? publicUrl = null)
{
    /// <summary>
    /// The cookie's name over plain HTTP (a development or loopback set-up). Over HTTPS (the request's, or
    /// <c>--public-url</c>'s) it is <see cref="SecureCookieName"/>: a cookie a sibling subdomain cannot set or shadow.
    /// </summary>
    public const string CookieName = "kiln_session";

    public const string SecureCookieName = "__Host-kiln_session";

    public const string CsrfHeader = "X-Kiln-Csrf";

    public const string CsrfField = "_csrf";

    /// <summary>How long a login lasts in the browser (the token's own expiry and revocation still apply).</summary>
    public static readonly TimeSpan Lifetime = TimeSpan.FromHours(12);

    private readonly string? _publicOrigin = publicUrl?.GetLeftPart(UriPartial.Authority);

    /// <summary>The address users reach Kiln at (<c>--public-url</c>), if it is not the listener's own.</summary>
    public Uri? PublicUrl => publicUrl;

    private byte[]? _key;

    // Over HTTPS the browser is told to send the cookie only over HTTPS, under the __Host- name.
    private bool Secure(HttpRequest request) => request.IsHttps || publicUrl?.Scheme == Uri.UriSchemeHttps;

    private string NameFor(HttpRequest request) => Secure(request) ? SecureCookieName : CookieName;

    /// <summary>The token a request's session cookie carries, if any.</summary>
    public string? TokenOf(HttpRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        return request.Cookies.TryGetValue(NameFor(request), out var token) && token.Length is > 0 and <= 512 ? token : null;
    }

    /// <summary>Remembers <paramref name="token"/> in the browser.</summary>
    public void Start(HttpResponse response, string token)
    {
        ArgumentNullException.ThrowIfNull(response);
        var request = response.HttpContext.Request;
        response.Cookies.Append(NameFor(request), token, Options(request, Lifetime));
    }

    /// <summary>Forgets the browser's session.</summary>
    public void End(HttpResponse response)
    {
        ArgumentNullException.ThrowIfNull(response);
        var request = response.HttpContext.Request;
        response.Cookies.Delete(NameFor(request), Options(request, null));
    }

    private CookieOptions Options(HttpRequest request, TimeSpan? lifetime) => new()
    {
        HttpOnly = true,
        SameSite = SameSiteMode.Strict,
        Secure = Secure(request),
        Path = "/",
        MaxAge = lifetime,
        IsEssential = true,
    };

    /// <summary>The CSRF token of the session holding <paramref name="token"/>.</summary>
    public async Task<string> CsrfTokenAsync(string token)
    {
        ArgumentNullException.ThrowIfNull(token);
        var key = _key ??= await InstallationKeys.GetAsync(store, "dashboard-csrf").ConfigureAwait(false);
        return Convert.ToHexStringLower(HMACSHA256.HashData(key, Encoding.UTF8.GetBytes("kiln-csrf:" + token)));
    }

    /// <summary>Whether <paramref name="presented"/> is the CSRF token of the session holding <paramref name="token"/>.</summary>
    public async Task<bool> ValidCsrfAsync(string token, string? presented)
    {
        if (presented is not { Length: 64 })
        {
            return false;
        }

        var expected = await CsrfTokenAsync(token).ConfigureAwait(false);
        return CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(expected), Encoding.ASCII.GetBytes(presented.ToLowerInvariant()));
    }

    /// <summary>
    /// Whether the browser says the request came from another site: by <c>Sec-Fetch-Site</c> (every current browser
    /// sends it), else by an <c>Origin</c> that is neither this host's nor <c>--public-url</c>'s. Such a request never
    /// changes anything, login included (a page elsewhere must not log a visitor in as someone else either).
    /// </summary>
    public bool CrossSite(HttpRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        var site = request.Headers["Sec-Fetch-Site"].ToString();
        if (site.Length > 0)
        {
            return site is not ("same-origin" or "none");
        }

        var origin = request.Headers.Origin.ToString();
        return origin.Length > 0 && !string.Equals(origin, $"{request.Scheme}://{request.Host}", StringComparison.OrdinalIgnoreCase)
            && !string.Equals(origin, _publicOrigin, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>Whether a request's method only reads.</summary>
    public static bool Safe(HttpRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        return HttpMethods.IsGet(request.Method) || HttpMethods.IsHead(request.Method);
    }
}
