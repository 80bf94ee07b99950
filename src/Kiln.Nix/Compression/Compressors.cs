namespace Kiln.Nix.Compression;

/// <summary>
/// Writing what binary caches store: a NAR compressed as a narinfo's <c>Compression:</c> will say, through the
/// system's liblzma and libzstd (as Nix does). The result is a stream to read: memory does not follow the NAR's size.
/// </summary>
public static class Compressors
{
    /// <summary>The methods <see cref="Open"/> writes.</summary>
    public static IReadOnlyList<string> Methods { get; } = ["none", "xz", "zstd"];

    /// <summary>The level each method uses unless asked for another: Nix's (xz 6, zstd 3).</summary>
    public static int DefaultLevel(string method) => method == "xz" ? 6 : 3;

    /// <summary>The levels a method takes (xz 0–9, zstd 1–19).</summary>
    public static bool IsLevel(string method, int level) => method == "xz" ? level is >= 0 and <= 9 : method != "zstd" || level is >= 1 and <= 19;

    /// <summary>A stream of <paramref name="input"/> compressed by <paramref name="method"/>; disposing it disposes the input.</summary>
    /// <exception cref="DecompressionException">The method or level is not one Kiln writes.</exception>
    public static Stream Open(string method, Stream input, int? level = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        var chosen = level ?? DefaultLevel(method);
        if (!IsLevel(method, chosen))
        {
            throw new DecompressionException($"{chosen} is not a {method} compression level");
        }

        return method switch
        {
            "none" or "" => input,
            "xz" => new XzEncoder(input, chosen),
            "zstd" => new ZstdEncoder(input, chosen),
            _ => throw new DecompressionException($"Kiln does not compress with '{method}' (it writes {string.Join(", ", Methods)})"),
        };
    }
}
