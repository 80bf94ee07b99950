namespace Kiln.Http;

/// <summary>How the HTTP binary cache runs.</summary>
public sealed record BinaryCacheOptions
{
    /// <summary>Where uploaded NARs wait for their narinfo (Nix uploads the NAR first); emptied on start.</summary>
    public required string StagingDirectory { get; init; }

    /// <summary>The largest (compressed) NAR an upload may send.</summary>
    public long MaxUploadSize { get; init; } = 64L << 30;

    /// <summary>The most bytes one account's uploaded NARs may hold while they wait for their narinfos (0: no limit).</summary>
    public long MaxStagedPerAccount { get; init; } = 16L << 30;

    /// <summary>How long an uploaded NAR waits for its narinfo before it is deleted.</summary>
    public TimeSpan StagingLifetime { get; init; } = TimeSpan.FromHours(1);

    /// <summary>
    /// Answer <c>nar/…</c> with a redirect to the blob store's own short-lived URL for the NAR (<c>kiln serve
    /// --nar-redirect</c>), valid this long, instead of sending its bytes; null to send them. Only where the blob store
    /// gives such URLs (S3's presigned ones): the bytes then go from the bucket to the client, not through Kiln.
    /// </summary>
    public TimeSpan? NarRedirect { get; init; }

    /// <summary><c>Priority</c> in <c>nix-cache-info</c> (lower is preferred; cache.nixos.org has 40).</summary>
    public int Priority { get; init; } = 30;
}
