using System.Text;
using Kiln.Nix.Hashing;

namespace Kiln.Nix.Tests.Hashing;

public class Nix32Tests
{
    // Vectors T1–T3 of docs/nix-protocols.md (checked there with Nix 2.8 and Nix's own tests).
    [Theory]
    [InlineData("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s")]
    [InlineData("800d59cfcd3c05e900cb4e214be48f6b886a08df", "vw46m23bizj4n8afrc0fj19wrp7mj3c0")]
    [InlineData("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03", "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq")]
    public void Encodes_and_decodes_known_vectors(string hex, string nix32)
    {
        var bytes = Convert.FromHexString(hex);
        Assert.Equal(nix32, Nix32.Encode(bytes));
        Assert.Equal(bytes, Nix32.Decode(nix32, bytes.Length));
    }

    [Theory]
    [InlineData(16, 26)]
    [InlineData(20, 32)]
    [InlineData(32, 52)]
    [InlineData(64, 103)]
    [InlineData(1, 2)]
    [InlineData(0, 0)]
    public void Encoded_length_matches_nix(int bytes, int chars) => Assert.Equal(chars, Nix32.EncodedLength(bytes));

    [Fact]
    public void Round_trips_random_values_of_every_length()
    {
        var random = new Random(32);
        for (var length = 0; length <= 70; length++)
        {
            for (var i = 0; i < 20; i++)
            {
                var bytes = new byte[length];
                random.NextBytes(bytes);
                var text = Nix32.Encode(bytes);
                Assert.Equal(Nix32.EncodedLength(length), text.Length);
                Assert.All(text, c => Assert.Contains(c, Nix32.Alphabet));
                Assert.Equal(bytes, Nix32.Decode(text, length));
            }
        }
    }

    [Theory]
    [InlineData("e")]
    [InlineData("o")]
    [InlineData("u")]
    [InlineData("t")]
    [InlineData("A")]
    [InlineData("-")]
    public void Rejects_characters_outside_the_alphabet(string bad)
    {
        var text = new StringBuilder("1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s");
        text[10] = bad[0];
        Assert.False(Nix32.TryDecode(text.ToString(), new byte[32]));
    }

    [Fact]
    public void Rejects_set_bits_beyond_the_value()
    {
        // 52 chars hold 260 bits and a 32-byte value 256: the first char carries bits 255–259, so only 0 and 1 fit.
        Assert.True(Nix32.TryDecode("1" + new string('0', 51), new byte[32]));
        Assert.False(Nix32.TryDecode("2" + new string('0', 51), new byte[32]));
        Assert.False(Nix32.TryDecode("z" + new string('0', 51), new byte[32]));
    }

    [Fact]
    public void Rejects_the_wrong_length() => Assert.False(Nix32.TryDecode("123", new byte[32]));
}
