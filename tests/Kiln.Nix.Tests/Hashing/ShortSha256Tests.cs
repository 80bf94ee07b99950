using System.Security.Cryptography;
using System.Text;
using Kiln.Nix.Hashing;

namespace Kiln.Nix.Tests.Hashing;

public class ShortSha256Tests
{
    // FIPS 180-4's examples (one block, two blocks of padding) and the empty input.
    [Theory]
    [InlineData("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")]
    [InlineData("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")]
    [InlineData("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")]
    public void Gives_the_standards_digests(string text, string hex)
    {
        Assert.Equal(hex, Convert.ToHexStringLower(ShortSha256.Hash(Encoding.ASCII.GetBytes(text))));
    }

    [Fact]
    public void Agrees_with_OpenSSL_at_every_length_across_the_block_boundaries()
    {
        // Every length up to five blocks: the padding's one- and two-block cases (55, 56, 63, 64, 119, 120 …), and whole
        // blocks before a tail; the bytes are random, with a fixed seed so a failure repeats.
        var random = new Random(20261207);
        for (var length = 0; length <= 320; length++)
        {
            var data = new byte[length];
            random.NextBytes(data);
            Assert.True(SHA256.HashData(data).AsSpan().SequenceEqual(ShortSha256.Hash(data)), $"length {length}");
        }

        var large = new byte[100_003];
        random.NextBytes(large);
        Assert.Equal(SHA256.HashData(large), ShortSha256.Hash(large));
    }
}
