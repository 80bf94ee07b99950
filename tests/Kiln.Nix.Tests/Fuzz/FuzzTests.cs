using System.Text;
using Kiln.Nix.Compression;
using Kiln.Nix.Derivations;
using Kiln.Nix.Nar;
using Kiln.Nix.Signing;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Fuzz;

/// <summary>
/// 20.4: the parsers of what clients and upstreams send — NAR, narinfo, .drv ATerm, and the decompressors — fed
/// mutations of real inputs (Nix's own golden files). Each may refuse an input with its format error, nothing else;
/// none hangs or allocates without bound. bench/fuzz/run.sh runs them longer.
/// </summary>
public class FuzzTests
{
    private static bool FormatError(Exception e) => e is NixFormatException;

    private static IEnumerable<byte[]> GoldenFiles(string directory, string pattern) =>
        Directory.GetFiles(Repo.Golden(directory), pattern).Order(StringComparer.Ordinal).Select(File.ReadAllBytes);

    [Fact]
    public void Nar()
    {
        var corpus = Fuzzer.Corpus("nar", GoldenFiles("nar", "*.nar"));
        Fuzzer.Run("nar", corpus, input => NarReading.Parse(new MemoryStream(input), new NarVisitor()), FormatError, Fuzzer.Iterations(20000));
    }

    [Fact]
    public void NarInfo_text()
    {
        var corpus = Fuzzer.Corpus("narinfo", GoldenFiles("narinfo", "*.narinfo"));
        Fuzzer.Run("narinfo", corpus, input =>
        {
            var info = NarInfo.Parse(Encoding.UTF8.GetString(input));
            _ = info.ToValidPathInfo();
            _ = NarInfo.ComputeFingerprint(info.StorePath, info.NarHash, info.NarSize, info.References);
        }, FormatError, Fuzzer.Iterations(20000));
    }

    [Fact]
    public void Derivation_ATerm_and_its_printed_form_round_trip()
    {
        var corpus = Fuzzer.Corpus("drv", GoldenFiles(Path.Combine("drv", "store"), "*.drv"));
        Fuzzer.Run("drv", corpus, input =>
        {
            var derivation = ATerm.Parse(input, "fuzz.drv");
            // What parses prints back to text that parses to the same derivation.
            var printed = ATerm.Print(derivation);
            Assert.Equal(printed, ATerm.Print(ATerm.Parse(printed, "fuzz.drv")));
        }, FormatError, Fuzzer.Iterations(20000));
    }

    public static TheoryData<string> Methods() => new("xz", "zstd", "bzip2", "gzip", "br");

    [Theory]
    [MemberData(nameof(Methods))]
    public void Decompressor(string method)
    {
        // Seeds: small NARs compressed by the tools Nix's caches use (and .NET for brotli and gzip).
        var seeds = GoldenFiles("nar", "*.nar").Take(4).Select(nar => Compress(method, nar)).ToList();
        var corpus = Fuzzer.Corpus(method, seeds);
        Fuzzer.Run(method, corpus, input =>
        {
            using var stream = Decompression.Open(method, new MemoryStream(input));
            var buffer = new byte[64 * 1024];
            long total = 0;
            int n;
            // A bomb is the consumer's to cut (at the declared NarSize); 16 MiB is enough to see the decoder is sane.
            while (total < (16 << 20) && (n = stream.Read(buffer)) > 0)
            {
                total += n;
            }
        }, FormatError, Fuzzer.Iterations(5000));
    }

    private static byte[] Compress(string method, byte[] data)
    {
        switch (method)
        {
            case "gzip":
            case "br":
                var output = new MemoryStream();
                using (Stream compressor = method == "gzip"
                    ? new System.IO.Compression.GZipStream(output, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true)
                    : new System.IO.Compression.BrotliStream(output, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true))
                {
                    compressor.Write(data);
                }

                return output.ToArray();
            default:
                var result = Processes.Run(method, ["-c"], data);
                Assert.True(result.ExitCode == 0, result.Stderr);
                return result.Stdout;
        }
    }
}
