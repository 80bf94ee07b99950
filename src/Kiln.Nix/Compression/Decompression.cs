using System.IO.Compression;

namespace Kiln.Nix.Compression;

/// <summary>A compressed file Kiln cannot read: an unknown method, or corrupt data.</summary>
public sealed class DecompressionException(string message) : NixFormatException(message);

/// <summary>
/// Reading what binary caches store: NARs compressed as a narinfo's <c>Compression:</c> field says (Nix chooses the
/// decompressor from that field alone, never by sniffing). <c>xz</c>, <c>zstd</c> and <c>bzip2</c> use the system's
/// liblzma, libzstd and libbz2 (as Nix does, through libarchive); <c>br</c> and <c>gzip</c> are .NET's own.
/// Every decoder streams: memory does not follow the size of the file.
/// </summary>
public static class Decompression
{
    /// <summary>The methods <see cref="Open"/> reads.</summary>
    public static IReadOnlyList<string> Methods { get; } = ["none", "xz", "zstd", "bzip2", "br", "gzip"];

    /// <summary>Whether <paramref name="method"/> is one Kiln reads.</summary>
    public static bool IsKnown(string method) => Methods.Contains(method);

    /// <summary>A stream of <paramref name="input"/> decompressed by <paramref name="method"/>; disposing it disposes the input.</summary>
    /// <exception cref="DecompressionException">The method is unknown.</exception>
    public static Stream Open(string method, Stream input)
    {
        ArgumentNullException.ThrowIfNull(input);
        return method switch
        {
            "none" or "" => input,
            "xz" => new XzDecoder(input),
            "zstd" => new ZstdDecoder(input),
            "bzip2" => new Bzip2Decoder(input),
            "br" => new ManagedDecoder("br", new BrotliStream(input, CompressionMode.Decompress)),
            "gzip" => new ManagedDecoder("gzip", new GZipStream(input, CompressionMode.Decompress)),
            _ => throw new DecompressionException($"unknown compression method '{method}' (Kiln reads {string.Join(", ", Methods)})"),
        };
    }

    /// <summary>The file-name extension Nix gives a NAR compressed this way (<c>.nar.xz</c> …).</summary>
    public static string Extension(string method) => method switch
    {
        "none" or "" => "",
        "zstd" => ".zst",
        "bzip2" => ".bz2",
        "gzip" => ".gz",
        _ => "." + method,
    };
}

/// <summary>
/// .NET's brotli and gzip decoders, with corrupt data reported as every other decoder reports it: brotli throws
/// <see cref="InvalidOperationException"/> ("Decoder ran into invalid data"), which would otherwise look like a bug in
/// Kiln (found by the fuzzer).
/// </summary>
internal sealed class ManagedDecoder(string name, Stream inner) : ReadOnlyStream
{
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        try
        {
            return inner.Read(buffer);
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException)
        {
            throw new DecompressionException($"{name} data is corrupt ({e.Message})");
        }
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        try
        {
            return await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException)
        {
            throw new DecompressionException($"{name} data is corrupt ({e.Message})");
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            inner.Dispose();
        }

        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        await inner.DisposeAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }
}
