using Kiln.Nix.StorePaths;

namespace Kiln.Http;

/// <summary>How the HTTP binary cache runs.</summary>
public sealed record BinaryCacheOptions
{
    /// <summary>Where uploaded NARs wait for their narinfo (Nix uploads the NAR first); emptied on start.</summary>
    public required string StagingDirectory { get; init; }

    /// <summary>Where compressed NARs are kept as uploaded, for clients whose narinfo cache names them.</summary>
    public required string NarFilesDirectory { get; init; }

    /// <summary>Where a derivation's build log is (a plain text file), or null when Kiln keeps none.</summary>
    public Func<StorePath, string>? LogPath { get; init; }

    /// <summary>The largest (compressed) NAR an upload may send.</summary>
    public long MaxUploadSize { get; init; } = 64L << 30;

    /// <summary>How long an uploaded NAR waits for its narinfo before it is deleted.</summary>
    public TimeSpan StagingLifetime { get; init; } = TimeSpan.FromHours(1);

    /// <summary><c>Priority</c> in <c>nix-cache-info</c> (lower is preferred; cache.nixos.org has 40).</summary>
    public int Priority { get; init; } = 30;
}
