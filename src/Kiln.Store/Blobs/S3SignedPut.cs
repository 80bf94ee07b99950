using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using Amazon.Runtime;
using Kiln.Nix.Hashing;

namespace Kiln.Store.Blobs;

/// <summary>
/// A blob's PUT, signed here (AWS Signature Version 4) with the SHA-256 its writer computed as the bytes came in — the
/// blob's name — instead of through the SDK, which would read the spool file once more to hash it and spend a few
/// milliseconds of its pipeline per request: for a push of hundreds of small NARs, a good part of the upload's CPU. The
/// server checks the body against that hash (AWS S3, Ceph RGW, MinIO do), so what it stores is what was received, not
/// merely what the spool file held. Where the bucket is addressed is the SDK's answer (a presigned URL's base, asked
/// once), as are the credentials (resolved, and refreshed, by the SDK). A PUT the server refuses for anything but its
/// body goes again through the SDK (<see cref="Refused"/>), which then reports what is wrong.
/// </summary>
internal sealed class S3SignedPut : IDisposable
{
    private static readonly string[] BodyRefusals = ["XAmzContentSHA256Mismatch", "BadDigest", "InvalidDigest"];

    private readonly Uri _base; // scheme, host and the path up to the key ("/bucket/" or "/"), as the SDK addresses it
    private readonly string _region;
    private readonly AWSCredentials _credentials;
    private readonly HttpClient _http;
    private SigningKeyOf? _signingKey; // (a reference: read and replaced whole by concurrent PUTs)

    public S3SignedPut(Uri keyUrl, string key, string region, AWSCredentials credentials)
    {
        ArgumentNullException.ThrowIfNull(keyUrl);
        ArgumentNullException.ThrowIfNull(key);
        var encodedKey = EncodeKey(key);
        var path = keyUrl.AbsolutePath;
        if (!path.EndsWith(encodedKey, StringComparison.Ordinal))
        {
            throw new ArgumentException($"the bucket's URL does not end with its key: {keyUrl.GetLeftPart(UriPartial.Path)}");
        }

        _base = new Uri(keyUrl.GetLeftPart(UriPartial.Authority) + path[..^encodedKey.Length]);
        _region = region;
        _credentials = credentials;
        _http = new HttpClient(new SocketsHttpHandler
        {
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
            AutomaticDecompression = DecompressionMethods.None,
            AllowAutoRedirect = false, // a redirect (a bucket in another region) is the SDK's to follow
        })
        {
            Timeout = Timeout.InfiniteTimeSpan,
        };
    }

    /// <summary>The server refused the request for a reason other than its body: the SDK should try.</summary>
    public sealed class Refused(string message) : Exception(message);

    /// <summary>The server refused the body: it is not what the SHA-256 it was signed with says.</summary>
    public sealed class BodyRefused(string code) : Exception($"the blob store refused a blob whose contents are not what was received ({code})");

    /// <summary>PUTs <paramref name="file"/> as <paramref name="key"/>; returns the ETag. Transient failures are tried again.</summary>
    /// <exception cref="Refused">A refusal that is not about the body (a signature, a permission, a feature).</exception>
    /// <exception cref="BodyRefused">The body is not what its SHA-256 says.</exception>
    /// <exception cref="HttpRequestException">The server unreachable or failing.</exception>
    public Task<string?> PutAsync(string key, string file, long length, NixHash sha256, string contentType, CancellationToken cancellationToken) =>
        PutAsync(key, () => new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.Asynchronous | FileOptions.SequentialScan),
            length, sha256, contentType, cancellationToken);

    /// <summary>PUTs a few bytes held in memory (<see cref="PutAsync(string, string, long, NixHash, string, CancellationToken)"/>).</summary>
    public Task<string?> PutAsync(string key, byte[] body, NixHash sha256, string contentType, CancellationToken cancellationToken) =>
        PutAsync(key, () => new MemoryStream(body, writable: false), body.Length, sha256, contentType, cancellationToken);

    // open: the body, from its start, once per attempt.
    private async Task<string?> PutAsync(string key, Func<Stream> open, long length, NixHash sha256, string contentType, CancellationToken cancellationToken)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await PutOnceAsync(key, open, length, sha256, contentType, cancellationToken).ConfigureAwait(false);
            }
            catch (HttpRequestException e) when (attempt < 3 && e.StatusCode is null or >= HttpStatusCode.InternalServerError
                && !cancellationToken.IsCancellationRequested)
            {
                await Task.Delay(100 * attempt * attempt, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    private async Task<string?> PutOnceAsync(string key, Func<Stream> open, long length, NixHash sha256, string contentType, CancellationToken cancellationToken)
    {
        var identity = await _credentials.GetCredentialsAsync().ConfigureAwait(false);
        var now = DateTime.UtcNow;
        var uri = new Uri(_base, EncodeKey(key));
        var payload = sha256.ToBase16();
        var stamp = now.ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture);
        var day = stamp[..8];

        // Signed: the host, the body's hash, the time, and the session token when there is one; all in sorted order.
        var host = uri.Authority; // (the port only when it is not the scheme's, as HttpClient sends Host)
        var signed = new List<(string Name, string Value)> { ("host", host), ("x-amz-content-sha256", payload), ("x-amz-date", stamp) };
        if (identity.UseToken)
        {
            signed.Add(("x-amz-security-token", identity.Token));
        }

        var names = string.Join(';', signed.Select(h => h.Name));
        var canonical = new StringBuilder()
            .Append("PUT\n").Append(uri.AbsolutePath).Append("\n\n");
        foreach (var (name, value) in signed)
        {
            canonical.Append(name).Append(':').Append(value.Trim()).Append('\n');
        }

        canonical.Append('\n').Append(names).Append('\n').Append(payload);
        var scope = $"{day}/{_region}/s3/aws4_request";
        var toSign = $"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{Hex(SHA256.HashData(Encoding.UTF8.GetBytes(canonical.ToString())))}";
        var signature = Hex(HMACSHA256.HashData(SigningKey(identity.SecretKey, day), Encoding.UTF8.GetBytes(toSign)));

        await using var body = open();
        using var request = new HttpRequestMessage(HttpMethod.Put, uri) { Content = new StreamContent(body, 1 << 18) };
        request.Content.Headers.ContentLength = length;
        request.Content.Headers.ContentType = MediaTypeHeaderValue.Parse(contentType);
        foreach (var (name, value) in signed.Skip(1)) // all but Host, which HttpClient sends itself
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }

        request.Headers.TryAddWithoutValidation("Authorization",
            $"AWS4-HMAC-SHA256 Credential={identity.AccessKey}/{scope}, SignedHeaders={names}, Signature={signature}");
        using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
        if (response.IsSuccessStatusCode)
        {
            return response.Headers.ETag?.Tag ?? (response.Headers.TryGetValues("ETag", out var etags) ? etags.FirstOrDefault() : null);
        }

        var code = ErrorCode(await ReadErrorAsync(response, cancellationToken).ConfigureAwait(false));
        var status = (int)response.StatusCode;
        if (BodyRefusals.Contains(code))
        {
            throw new BodyRefused(code);
        }

        if (status < 500)
        {
            throw new Refused($"{status} {code}");
        }

        throw new HttpRequestException($"the server answered {status} {code}", null, response.StatusCode);
    }

    // kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, day), region), "s3"), "aws4_request"): the same all day.
    private byte[] SigningKey(string secret, string day)
    {
        if (_signingKey is { } kept && kept.Day == day && kept.Secret == secret)
        {
            return kept.Key;
        }

        var key = HMACSHA256.HashData(Encoding.UTF8.GetBytes("AWS4" + secret), Encoding.UTF8.GetBytes(day));
        foreach (var part in new[] { _region, "s3", "aws4_request" })
        {
            key = HMACSHA256.HashData(key, Encoding.UTF8.GetBytes(part));
        }

        _signingKey = new SigningKeyOf(day, secret, key);
        return key;
    }

    private sealed record SigningKeyOf(string Day, string Secret, byte[] Key);

    // The start of an error's body, enough for its code: never all of what a server may send.
    private static async Task<string> ReadErrorAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        try
        {
            await using var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            var buffer = new byte[4096];
            var length = await stream.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
            return Encoding.UTF8.GetString(buffer, 0, length);
        }
        catch (IOException e)
        {
            // Cut off: a failure of the server or the way to it (tried again, then a storage failure), not a refusal.
            throw new HttpRequestException($"the server's answer ({(int)response.StatusCode}) was cut off", e);
        }
    }

    // An S3 error's <Code>, never its message (which may echo the request); "" when there is none.
    private static string ErrorCode(string body)
    {
        var start = body.IndexOf("<Code>", StringComparison.Ordinal);
        var end = start < 0 ? -1 : body.IndexOf("</Code>", start, StringComparison.Ordinal);
        var code = end < 0 ? "" : body[(start + 6)..end];
        return code.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_') ? code : "";
    }

    // A key as S3 canonicalises it: every byte but the unreserved ones percent-encoded, '/' kept.
    internal static string EncodeKey(string key) => string.Join('/', key.Split('/').Select(Uri.EscapeDataString));

    private static string Hex(byte[] bytes) => Convert.ToHexStringLower(bytes);

    public void Dispose() => _http.Dispose();
}
