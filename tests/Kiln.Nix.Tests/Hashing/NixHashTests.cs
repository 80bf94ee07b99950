using Kiln.Nix.Hashing;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Hashing;

public class NixHashTests
{
    private const string AbcHex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    private const string AbcNix32 = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
    private const string AbcBase64 = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";

    [Theory]
    [InlineData("sha256:" + AbcHex)]
    [InlineData("sha256:" + AbcNix32)]
    [InlineData("sha256:" + AbcBase64)]
    [InlineData("sha256-" + AbcBase64)]
    [InlineData("sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")]
    public void Parses_every_prefixed_form(string text)
    {
        var hash = NixHash.ParseAnyPrefixed(text);
        Assert.Equal(NixHashAlgorithm.Sha256, hash.Algorithm);
        Assert.Equal(AbcHex, hash.ToBase16());
    }

    [Theory]
    [InlineData(AbcHex)]
    [InlineData(AbcNix32)]
    [InlineData(AbcBase64)]
    public void Parses_unprefixed_forms_when_the_algorithm_is_known(string text) =>
        Assert.Equal(AbcHex, NixHash.ParseAny(text, NixHashAlgorithm.Sha256).ToBase16());

    [Fact]
    public void Accepts_unpadded_sri_and_refuses_stray_characters_as_nix_does()
    {
        Assert.Equal(AbcHex, NixHash.ParseSri("sha256-" + AbcBase64.TrimEnd('=')).ToBase16());
        Assert.Throws<BadHashException>(() => NixHash.ParseSri("sha256-" + AbcBase64.TrimEnd('=') + " "));
        Assert.Throws<BadHashException>(() => NixHash.ParseSri("sha256-" + AbcBase64[..20] + "\t" + AbcBase64[20..]));
    }

    [Fact]
    public void Prints_every_form()
    {
        var hash = NixHash.Compute(NixHashAlgorithm.Sha256, "abc"u8);
        Assert.Equal(AbcHex, hash.ToBase16());
        Assert.Equal(AbcNix32, hash.ToNix32());
        Assert.Equal(AbcBase64, hash.ToBase64());
        Assert.Equal("sha256-" + AbcBase64, hash.ToSri());
        Assert.Equal("sha256:" + AbcNix32, hash.ToString());
        Assert.Equal("sha256:" + AbcHex, hash.ToString(HashFormat.Base16, true));
        Assert.Equal("sha256-" + AbcBase64, hash.ToString(HashFormat.Sri, false));
    }

    [Theory]
    [InlineData(NixHashAlgorithm.Md5, "900150983cd24fb0d6963f7d28e17f72")]
    [InlineData(NixHashAlgorithm.Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d")]
    [InlineData(NixHashAlgorithm.Sha512, "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f")]
    public void Computes_every_algorithm(NixHashAlgorithm algorithm, string hex)
    {
        var hash = NixHash.Compute(algorithm, "abc"u8);
        Assert.Equal(hex, hash.ToBase16());
        Assert.Equal(hash, NixHash.ParseAnyPrefixed(hash.ToString()));
        Assert.Equal(hash, NixHash.ParseSri(hash.ToSri()));
        Assert.Equal(hash, NixHash.ParseAny(hash.ToBase64(), algorithm));
    }

    [Theory]
    [InlineData(AbcHex, null, "does not include a type")]
    [InlineData("sha1:" + AbcHex, NixHashAlgorithm.Sha256, "should have type 'sha256'")]
    [InlineData("sha256:abc", null, "has wrong length for hash type 'sha256'")]
    [InlineData("blake3:" + AbcHex, null, "unknown hash algorithm 'blake3'")]
    [InlineData("sha256:za7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", null, "invalid base-16 hash")]
    [InlineData("sha256:eb8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s", null, "invalid base-32 hash")]
    [InlineData("sha256-" + AbcHex, null, "invalid SRI hash")]
    [InlineData("sha256:!ngWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=", null, "invalid base-64 hash")]
    public void Refuses_what_nix_refuses(string text, NixHashAlgorithm? expected, string message)
    {
        var error = Assert.Throws<BadHashException>(() => NixHash.ParseAny(text, expected));
        Assert.Contains(message, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Hashing_sink_matches_one_shot_hashing_however_the_data_is_split()
    {
        var data = new byte[10_000];
        new Random(7).NextBytes(data);
        var expected = NixHash.Compute(NixHashAlgorithm.Sha256, data);
        foreach (var chunk in new[] { 1, 7, 64, 4096, 10_000 })
        {
            using var sink = new HashingSink(NixHashAlgorithm.Sha256);
            for (var i = 0; i < data.Length; i += chunk)
            {
                sink.Append(data.AsSpan(i, Math.Min(chunk, data.Length - i)));
            }

            Assert.Equal(data.Length, sink.BytesWritten);
            Assert.Equal(expected, sink.Finish());
        }
    }

    [Fact]
    public void Conversions_agree_with_nix_on_random_hashes()
    {
        NixTool.Require();
        var random = new Random(2024);
        foreach (var algorithm in new[] { NixHashAlgorithm.Md5, NixHashAlgorithm.Sha1, NixHashAlgorithm.Sha256, NixHashAlgorithm.Sha512 })
        {
            for (var i = 0; i < 5; i++)
            {
                var digest = new byte[algorithm.Size()];
                random.NextBytes(digest);
                var hash = new NixHash(algorithm, digest);
                var name = algorithm.Name();
                Assert.Equal(hash.ToNix32(), NixTool.Run("nix", "hash", "to-base32", "--type", name, hash.ToBase16()).StdoutText.Trim());
                Assert.Equal(hash.ToBase16(), NixTool.Run("nix", "hash", "to-base16", "--type", name, hash.ToNix32()).StdoutText.Trim());
                Assert.Equal(hash.ToSri(), NixTool.Run("nix", "hash", "to-sri", "--type", name, hash.ToBase64()).StdoutText.Trim());
                Assert.Equal(hash.ToBase64(), NixTool.Run("nix", "hash", "to-base64", hash.ToSri()).StdoutText.Trim());
            }
        }
    }
}
