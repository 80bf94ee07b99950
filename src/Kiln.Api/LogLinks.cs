using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Kiln.Store;
using Microsoft.AspNetCore.Http;

namespace Kiln.Api;

/// <summary>
/// Signed links to one build's log, for pasting into CI output without a token: <c>/api/v1/signed/builds/ID/log
/// ?expires=UNIX&amp;signature=HEX</c>, an HMAC-SHA256 of the build (its id, step and start) and the expiry under a key
/// of this installation (a server secret in the database, so every front door honours every front door's links). A
/// link reads that one log until it expires; changing the id or the expiry breaks the signature, and so does the
/// build's record going (its account deleted) — even if a later build were given the same id.
/// </summary>
public sealed class LogLinks(KilnStore store, Uri? publicUrl = null)
{
    public const string Path = KilnApi.Prefix + "/signed/builds";

    /// <summary>Where the dashboard (Kiln.Dashboard) shows a build: this, then its id.</summary>
    public const string DashboardBuilds = "/ui/builds/";

    /// <summary>The address links are made with: <c>--public-url</c>, else the one the request came to.</summary>
    public string Base(HttpRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        return publicUrl is null ? $"{request.Scheme}://{request.Host}" : publicUrl.ToString().TrimEnd('/');
    }

    /// <summary>The longest a link may live.</summary>
    public static readonly TimeSpan MaxLifetime = TimeSpan.FromDays(7);

    private byte[]? _key;

    /// <summary>
    /// An absolute link to build <paramref name="id"/>'s log, valid until <paramref name="expires"/> (at most
    /// <see cref="MaxLifetime"/> ahead), on the host the request came to.
    /// </summary>
    public async Task<string> LinkAsync(HttpRequest request, long id, DateTimeOffset expires)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (expires > DateTimeOffset.UtcNow + MaxLifetime)
        {
            throw new ArgumentOutOfRangeException(nameof(expires), "a log link lives a week at most");
        }

        var unix = expires.ToUnixTimeSeconds();
        var signature = await SignAsync(id, unix).ConfigureAwait(false) ?? throw new ArgumentException($"there is no build {id}", nameof(id));
        return $"{Base(request)}{Path}/{id}/log?expires={unix}&signature={signature}";
    }

    /// <summary>Whether the signature is this installation's for that build and expiry, and the expiry is still ahead.</summary>
    public async Task<bool> ValidAsync(long id, long expires, string? signature, DateTimeOffset now)
    {
        if (signature is null || signature.Length != 64 || expires <= now.ToUnixTimeSeconds() || expires > (now + MaxLifetime).ToUnixTimeSeconds())
        {
            return false;
        }

        return await SignAsync(id, expires).ConfigureAwait(false) is { } expected
            && CryptographicOperations.FixedTimeEquals(Encoding.ASCII.GetBytes(expected), Encoding.ASCII.GetBytes(signature.ToLowerInvariant()));
    }

    // Null when there is no such build.
    private async Task<string?> SignAsync(long id, long expires)
    {
        // The build as recorded: a link names that build, not whatever may carry its id one day.
        var builds = await store.Builds.ListBuildsAsync(null, new Kiln.Store.Metadata.BuildQuery { Before = id + 1, Limit = 1 }, CancellationToken.None).ConfigureAwait(false);
        if (builds is not [{ } build] || build.Id != id)
        {
            return null;
        }

        // Read once it is first needed (a failed read is tried again next time), the same for every front door.
        var key = _key ??= await InstallationKeys.GetAsync(store, "api-log-links").ConfigureAwait(false);
        return Convert.ToHexStringLower(HMACSHA256.HashData(key,
            Encoding.UTF8.GetBytes(string.Create(CultureInfo.InvariantCulture, $"kiln-build-log:{id}:{build.StepKey}:{build.Started}:{expires}"))));
    }
}
