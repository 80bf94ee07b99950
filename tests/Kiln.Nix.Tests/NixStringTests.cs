namespace Kiln.Nix.Tests;

public class NixStringTests
{
    [Fact]
    public void Any_bytes_round_trip()
    {
        var random = new Random(11);
        for (var i = 0; i < 2000; i++)
        {
            var bytes = new byte[random.Next(0, 40)];
            random.NextBytes(bytes);
            var text = NixString.Decode(bytes);
            Assert.Equal(bytes.Length, NixString.GetByteCount(text));
            Assert.Equal(bytes, NixString.Encode(text));
        }
    }

    [Fact]
    public void Valid_utf8_decodes_as_usual()
    {
        const string Text = "ünïcödé 日本語 😀 \U00010080";
        Assert.Equal(Text, NixString.Decode(System.Text.Encoding.UTF8.GetBytes(Text)));
        Assert.Equal(System.Text.Encoding.UTF8.GetBytes(Text), NixString.Encode(Text));
    }

    [Fact]
    public void An_invalid_byte_after_a_four_byte_sequence_stays_a_byte()
    {
        byte[] bytes = [0xf0, 0x90, 0x82, 0x80, 0xb2, 0x41];
        Assert.Equal(bytes, NixString.Encode(NixString.Decode(bytes)));
    }
}
