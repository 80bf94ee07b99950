using Amazon;
using Amazon.Runtime;
using Amazon.Runtime.CredentialManagement;
using Amazon.S3;

namespace Kiln.Store.Blobs;

/// <summary>
/// Where blobs live in an S3-compatible object store, as an operator writes it for <c>--blobs</c>:
/// <c>s3://BUCKET[/PREFIX]?region=eu-west-1&amp;endpoint=https://…&amp;path_style=true&amp;profile=…&amp;credentials_file=…</c>.
/// <c>endpoint</c> names a server other than AWS (MinIO, R2, Garage, Ceph RGW; path-style addressing then, unless
/// <c>path_style=false</c>). Credentials are never in the URL: they come from the AWS SDK's usual places
/// (<c>AWS_ACCESS_KEY_ID</c>/<c>AWS_SECRET_ACCESS_KEY</c>, the shared credentials file, an instance role) or from the
/// named credentials file and profile.
/// </summary>
public sealed record S3BlobLocation(string Bucket, string Prefix, string Region, Uri? Endpoint, bool PathStyle, string? Profile, string? CredentialsFile)
{
    /// <summary>Whether <paramref name="text"/> is an S3 location.</summary>
    public static bool IsS3(string text) => text.StartsWith("s3://", StringComparison.Ordinal);

    private static readonly string[] Parameters = ["region", "endpoint", "path_style", "profile", "credentials_file"];

    /// <exception cref="ArgumentException">Not an S3 location Kiln reads.</exception>
    public static S3BlobLocation Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!IsS3(text) || !Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Host.Length == 0)
        {
            // Not echoed: a mistyped location may carry a secret key.
            throw new ArgumentException("the blob store is not an S3 location (s3://BUCKET/PREFIX?region=…&endpoint=…)");
        }

        if (uri.UserInfo.Length > 0)
        {
            throw new ArgumentException("an S3 location carries no credentials: give them in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a credentials file");
        }

        var query = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in uri.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var equals = pair.IndexOf('=', StringComparison.Ordinal);
            var name = Uri.UnescapeDataString(equals < 0 ? pair : pair[..equals]);
            if (!Parameters.Contains(name))
            {
                throw new ArgumentException($"the S3 location parameter '{name}' is not one Kiln knows ({string.Join(", ", Parameters)})");
            }

            query[name] = equals < 0 ? "" : Uri.UnescapeDataString(pair[(equals + 1)..]);
        }

        Uri? endpoint = null;
        if (query.TryGetValue("endpoint", out var endpointText)
            && (!Uri.TryCreate(endpointText, UriKind.Absolute, out endpoint) || endpoint.Scheme is not ("http" or "https")))
        {
            throw new ArgumentException($"the S3 endpoint '{endpointText}' is not an http:// or https:// URL");
        }

        var pathStyle = query.TryGetValue("path_style", out var style) ? style is "true" or "1" or "" : endpoint is not null;
        var prefix = Uri.UnescapeDataString(uri.AbsolutePath).Trim('/');
        return new S3BlobLocation(uri.Host, prefix.Length == 0 ? "" : prefix + "/", query.GetValueOrDefault("region", "us-east-1"), endpoint, pathStyle,
            query.GetValueOrDefault("profile"), query.GetValueOrDefault("credentials_file"));
    }

    /// <summary>A client for this location. Third-party servers get only the checksums S3 requires (newer SDK defaults are not understood everywhere).</summary>
    public IAmazonS3 CreateClient()
    {
        var config = ClientConfig();
        return Credentials() is { } credentials ? new AmazonS3Client(credentials, config) : new AmazonS3Client(config);
    }

    /// <summary>The client configuration for this location (its endpoint, region and addressing), without credentials.</summary>
    public AmazonS3Config ClientConfig()
    {
        var config = new AmazonS3Config
        {
            ForcePathStyle = PathStyle,
            RequestChecksumCalculation = RequestChecksumCalculation.WHEN_REQUIRED,
            ResponseChecksumValidation = ResponseChecksumValidation.WHEN_REQUIRED,
        };
        if (Endpoint is not null)
        {
            config.ServiceURL = Endpoint.ToString();
            config.AuthenticationRegion = Region;
        }
        else
        {
            config.RegionEndpoint = RegionEndpoint.GetBySystemName(Region);
        }

        return config;
    }

    /// <summary>The credentials the client for this location uses: the named file's profile, or the SDK's usual places.</summary>
    internal AWSCredentials ResolveCredentials() =>
        Credentials() ?? Amazon.Runtime.Credentials.DefaultAWSCredentialsIdentityResolver.GetCredentials(ClientConfig());

    private AWSCredentials? Credentials()
    {
        if (CredentialsFile is null && Profile is null)
        {
            return null; // the SDK's own chain: environment, shared file, instance role
        }

        var file = new SharedCredentialsFile(CredentialsFile ?? SharedCredentialsFile.DefaultFilePath);
        var profile = Profile ?? "default";
        return file.TryGetProfile(profile, out var found) && AWSCredentialsFactory.TryGetAWSCredentials(found, file, out var credentials)
            ? credentials
            : throw new ArgumentException($"no S3 credentials for profile '{profile}' in {CredentialsFile ?? SharedCredentialsFile.DefaultFilePath}");
    }
}
