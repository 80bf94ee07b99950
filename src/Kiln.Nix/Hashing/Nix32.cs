namespace Kiln.Nix.Hashing;

/// <summary>
/// Nix's "base32": the alphabet <c>0123456789abcdfghijklmnpqrsvwxyz</c> (no e, o, u, t), with the
/// bits taken from the end of the byte array first, so the first printed character holds the
/// highest bit group. An n-byte value prints as <c>floor((8n − 1) / 5) + 1</c> characters (20 bytes → 32,
/// 32 bytes → 52). See Nix's <c>src/libutil/hash.cc</c> (<c>printHash32</c>, the base-32 branch of
/// <c>Hash::Hash</c>). Decoding rejects characters outside the alphabet and set bits beyond the byte length.
/// </summary>
public static class Nix32
{
    /// <summary>The 32 digits, in value order.</summary>
    public const string Alphabet = "0123456789abcdfghijklmnpqrsvwxyz";

    // Value of each ASCII character as a digit, or -1.
    private static readonly sbyte[] DigitValues = BuildDigitValues();

    private static sbyte[] BuildDigitValues()
    {
        var values = new sbyte[128];
        Array.Fill(values, (sbyte)-1);
        for (var i = 0; i < Alphabet.Length; i++)
        {
            values[Alphabet[i]] = (sbyte)i;
        }

        return values;
    }

    /// <summary>The value (0–31) of an ASCII digit, or −1.</summary>
    public static int DigitValue(byte c) => c < 128 ? DigitValues[c] : -1;

    /// <summary>Whether <paramref name="c"/> is one of the 32 digits.</summary>
    public static bool IsDigit(char c) => c < 128 && DigitValues[c] >= 0;

    /// <summary>Whether the byte <paramref name="c"/> is the ASCII code of one of the 32 digits.</summary>
    public static bool IsDigit(byte c) => c < 128 && DigitValues[c] >= 0;

    /// <summary>The number of characters that encode <paramref name="byteCount"/> bytes.</summary>
    public static int EncodedLength(int byteCount) => byteCount == 0 ? 0 : ((byteCount * 8) - 1) / 5 + 1;

    /// <summary>Encodes <paramref name="bytes"/> in Nix32.</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        Span<char> chars = stackalloc char[EncodedLength(bytes.Length)];
        Encode(bytes, chars);
        return new string(chars);
    }

    /// <summary>Encodes <paramref name="bytes"/> into <paramref name="destination"/>, which must hold exactly <see cref="EncodedLength"/> characters.</summary>
    public static void Encode(ReadOnlySpan<byte> bytes, Span<char> destination)
    {
        var length = EncodedLength(bytes.Length);
        if (destination.Length != length)
        {
            throw new ArgumentException($"destination must hold exactly {length} characters", nameof(destination));
        }

        for (var k = length - 1; k >= 0; k--)
        {
            var bit = k * 5;
            var i = bit / 8;
            var j = bit % 8;
            var c = bytes[i] >> j;
            if (i + 1 < bytes.Length)
            {
                c |= bytes[i + 1] << (8 - j);
            }

            destination[length - 1 - k] = Alphabet[c & 31];
        }
    }

    /// <summary>Decodes a Nix32 string of <see cref="EncodedLength"/>(<paramref name="destination"/>.Length) characters; false if any character is not a digit or excess bits are set.</summary>
    public static bool TryDecode(ReadOnlySpan<char> text, Span<byte> destination)
    {
        if (text.Length != EncodedLength(destination.Length))
        {
            return false;
        }

        destination.Clear();
        for (var n = 0; n < text.Length; n++)
        {
            var c = text[text.Length - n - 1];
            if (!IsDigit(c))
            {
                return false;
            }

            var digit = DigitValues[c];
            var bit = n * 5;
            var i = bit / 8;
            var j = bit % 8;
            destination[i] |= (byte)(digit << j);
            var carry = digit >> (8 - j);
            if (i + 1 < destination.Length)
            {
                destination[i + 1] |= (byte)carry;
            }
            else if (carry != 0)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Decodes a Nix32 string into <paramref name="byteCount"/> bytes.</summary>
    /// <exception cref="BadHashException">The text is not valid Nix32 of that length.</exception>
    public static byte[] Decode(ReadOnlySpan<char> text, int byteCount)
    {
        var bytes = new byte[byteCount];
        if (!TryDecode(text, bytes))
        {
            throw new BadHashException($"invalid base-32 string '{text}'");
        }

        return bytes;
    }
}
