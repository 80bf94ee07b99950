using System.IO.Compression;
using Kiln.Nix.Compression;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Compression;

/// <summary>Kiln's decoders against what the xz, zstd and bzip2 tools (and .NET's brotli and gzip) write.</summary>
public class DecompressionTests
{
    // Compressible and incompressible parts, larger than the decoders' input block, so every loop turns.
    private static byte[] Sample(int seed)
    {
        var random = new Random(seed);
        var data = new byte[700_000];
        random.NextBytes(data.AsSpan(0, 300_000));
        for (var i = 300_000; i < data.Length; i++)
        {
            data[i] = (byte)"the quick brown fox "[i % 20];
        }

        return data;
    }

    private static byte[] Compress(string method, byte[] data) => method switch
    {
        "xz" => Tool("xz", ["-c", "-6"], data),
        "zstd" => Tool("zstd", ["-c", "-q"], data),
        "bzip2" => Tool("bzip2", ["-c"], data),
        "br" => Managed(s => new BrotliStream(s, CompressionLevel.Fastest, leaveOpen: true), data),
        "gzip" => Managed(s => new GZipStream(s, CompressionLevel.Fastest, leaveOpen: true), data),
        _ => data,
    };

    private static byte[] Tool(string tool, string[] args, byte[] data)
    {
        var result = Processes.Run(tool, args, data);
        Assert.True(result.ExitCode == 0, result.Stderr);
        return result.Stdout;
    }

    private static byte[] Managed(Func<Stream, Stream> open, byte[] data)
    {
        var output = new MemoryStream();
        using (var compressor = open(output))
        {
            compressor.Write(data);
        }

        return output.ToArray();
    }

    private static byte[] Decompress(string method, byte[] compressed)
    {
        using var stream = Decompression.Open(method, new MemoryStream(compressed));
        var output = new MemoryStream();
        var buffer = new byte[7919]; // odd-sized reads
        int n;
        while ((n = stream.Read(buffer)) > 0)
        {
            output.Write(buffer, 0, n);
        }

        return output.ToArray();
    }

    [Theory]
    [InlineData("none")]
    [InlineData("xz")]
    [InlineData("zstd")]
    [InlineData("bzip2")]
    [InlineData("br")]
    [InlineData("gzip")]
    public void Reads_what_the_tools_write(string method)
    {
        var data = Sample(method.Length);
        Assert.Equal(data, Decompress(method, Compress(method, data)));
    }

    [Theory]
    [InlineData("xz")]
    [InlineData("zstd")]
    [InlineData("bzip2")]
    public void Empty_input_compressed_reads_as_empty(string method) =>
        Assert.Empty(Decompress(method, Compress(method, [])));

    [Theory]
    [InlineData("xz")]
    [InlineData("zstd")]
    public void Concatenated_streams_read_as_one(string method)
    {
        var (a, b) = (Sample(1), Sample(2));
        Assert.Equal(a.Concat(b).ToArray(), Decompress(method, Compress(method, a).Concat(Compress(method, b)).ToArray()));
    }

    [Theory]
    [InlineData("xz")]
    [InlineData("zstd")]
    [InlineData("bzip2")]
    public void A_truncated_file_is_an_error_not_a_short_one(string method)
    {
        var compressed = Compress(method, Sample(3));
        var cut = compressed[..(compressed.Length * 2 / 3)];
        Assert.Throws<DecompressionException>(() => Decompress(method, cut));
    }

    [Theory]
    [InlineData("xz")]
    [InlineData("zstd")]
    [InlineData("bzip2")]
    [InlineData("br")] // .NET's brotli threw InvalidOperationException (found by the fuzzer)
    [InlineData("gzip")]
    public void Garbage_is_an_error(string method)
    {
        var garbage = Sample(4)[..5000];
        Assert.Throws<DecompressionException>(() => Decompress(method, garbage));
    }

    [Fact]
    public void Trailing_garbage_after_a_bzip2_stream_is_an_error()
    {
        var compressed = Compress("bzip2", Sample(5)).Concat("junk"u8.ToArray()).ToArray();
        Assert.Throws<DecompressionException>(() => Decompress("bzip2", compressed));
    }

    [Fact]
    public void Unknown_methods_are_refused() =>
        Assert.Throws<DecompressionException>(() => Decompression.Open("lz5", new MemoryStream()));

    [Fact]
    public void Xz_data_asking_for_a_1_GiB_dictionary_is_refused_before_it_is_allocated()
    {
        // 20.4: liblzma allocates what the block header's dictionary size says (up to 4 GiB) unless given a limit.
        // xz itself writes a small stream; its LZMA2 dictionary code is patched to 36 (1 GiB) and the header's CRC32
        // fixed, as a hostile uploader would send it.
        var xz = Tool("xz", ["-c", "--check=crc32", "--lzma2=dict=1MiB"], "small"u8.ToArray());
        var headerSize = (xz[12] + 1) * 4;
        Assert.Equal(0, xz[13] & 0xC3); // one filter, no optional sizes: the filter flags follow at once
        Assert.Equal([0x21, 0x01], xz[14..16]); // LZMA2, one byte of properties: the dictionary code
        xz[16] = 36;
        BitConverter.TryWriteBytes(xz.AsSpan(12 + headerSize - 4), Crc32(xz.AsSpan(12, headerSize - 4)));

        var refused = Assert.Throws<DecompressionException>(() => Decompress("xz", xz));
        Assert.Contains("more than 256 MiB of memory", refused.Message, StringComparison.Ordinal);
    }

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        var crc = 0xFFFFFFFFu;
        foreach (var b in data)
        {
            crc ^= b;
            for (var k = 0; k < 8; k++)
            {
                crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
            }
        }

        return ~crc;
    }
}
