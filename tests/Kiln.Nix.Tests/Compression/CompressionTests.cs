using Kiln.Nix.Compression;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Compression;

/// <summary>Kiln's encoders (what it pushes to accounts' caches) read back by the xz and zstd tools, and by its own decoders.</summary>
public class CompressionTests
{
    private static byte[] Sample(int length)
    {
        var random = new Random(length);
        var data = new byte[length];
        random.NextBytes(data.AsSpan(0, length / 2));
        for (var i = length / 2; i < length; i++)
        {
            data[i] = (byte)"a nar of some kind "[i % 19];
        }

        return data;
    }

    private static byte[] Compress(string method, byte[] data, int? level = null)
    {
        using var stream = Compressors.Open(method, new MemoryStream(data), level);
        var output = new MemoryStream();
        var buffer = new byte[5003]; // odd-sized reads
        int n;
        while ((n = stream.Read(buffer)) > 0)
        {
            output.Write(buffer, 0, n);
        }

        return output.ToArray();
    }

    [Theory]
    [InlineData("xz", "xz", 0)]
    [InlineData("xz", "xz", 700_000)]
    [InlineData("zstd", "zstd", 0)]
    [InlineData("zstd", "zstd", 700_000)]
    public void TheToolsReadWhatKilnWrites(string method, string tool, int length)
    {
        var data = Sample(length);
        var compressed = Compress(method, data);
        var result = Processes.Run(tool, ["-d", "-c"], compressed);
        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Equal(data, result.Stdout);
        if (length > 0)
        {
            Assert.True(compressed.Length < length * 3 / 4, $"{method} wrote {compressed.Length} bytes of {length}");
        }
    }

    [Theory]
    [InlineData("xz", 1)]
    [InlineData("zstd", 19)]
    [InlineData("none", null)]
    public async Task KilnReadsWhatItWrites(string method, int? level)
    {
        var data = Sample(300_000);
        await using var stream = Decompression.Open(method, new MemoryStream(Compress(method, data, level)));
        var output = new MemoryStream();
        await stream.CopyToAsync(output);
        Assert.Equal(data, output.ToArray());
    }

    [Fact]
    public void UnknownMethodsAndLevelsAreRefused()
    {
        Assert.Throws<DecompressionException>(() => Compressors.Open("bzip2", new MemoryStream()));
        Assert.Throws<DecompressionException>(() => Compressors.Open("xz", new MemoryStream(), 10));
        Assert.Throws<DecompressionException>(() => Compressors.Open("zstd", new MemoryStream(), 0));
    }
}
