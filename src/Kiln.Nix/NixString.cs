using System.Text;
using System.Text.Unicode;

namespace Kiln.Nix;

/// <summary>
/// Nix strings are bytes, usually but not always UTF-8 (a derivation's environment can hold anything
/// <c>builtins.readFile</c> read; a file name is whatever the file system holds). Kiln keeps them in .NET strings
/// losslessly: valid UTF-8 decodes as usual, and each byte of an invalid sequence becomes the lone low surrogate
/// U+DC80–U+DCFF (Python's "surrogateescape"), which <see cref="Encode(string)"/> turns back into that byte. Hashes,
/// .drv files and protocol messages therefore come out byte for byte as they went in.
/// </summary>
public static class NixString
{
    private const char EscapeBase = '\uDC00';

    /// <summary>Decodes bytes losslessly.</summary>
    public static string Decode(ReadOnlySpan<byte> bytes)
    {
        if (Utf8.IsValid(bytes))
        {
            return Encoding.UTF8.GetString(bytes);
        }

        var builder = new StringBuilder(bytes.Length);
        while (!bytes.IsEmpty)
        {
            if (Rune.DecodeFromUtf8(bytes, out var rune, out var consumed) == System.Buffers.OperationStatus.Done)
            {
                builder.Append(rune.ToString());
                bytes = bytes[consumed..];
            }
            else
            {
                builder.Append((char)(EscapeBase + bytes[0]));
                bytes = bytes[1..];
            }
        }

        return builder.ToString();
    }

    /// <summary>Encodes a string back to the bytes it was decoded from (UTF-8 plus escaped bytes).</summary>
    public static byte[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!HasEscapes(text))
        {
            return Encoding.UTF8.GetBytes(text);
        }

        var bytes = new byte[GetByteCount(text)];
        Encode(text, bytes);
        return bytes;
    }

    /// <summary>The number of bytes <see cref="Encode(string)"/> produces.</summary>
    public static int GetByteCount(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!HasEscapes(text))
        {
            return Encoding.UTF8.GetByteCount(text);
        }

        var count = 0;
        for (var i = 0; i < text.Length; i++)
        {
            if (IsEscapedByte(text, i))
            {
                count++;
            }
            else if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                count += 4;
                i++;
            }
            else
            {
                count += Encoding.UTF8.GetByteCount(text.AsSpan(i, 1));
            }
        }

        return count;
    }

    /// <summary>Encodes into <paramref name="destination"/>, which must hold <see cref="GetByteCount"/> bytes; returns the count.</summary>
    public static int Encode(string text, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!HasEscapes(text))
        {
            return Encoding.UTF8.GetBytes(text, destination);
        }

        var written = 0;
        for (var i = 0; i < text.Length; i++)
        {
            if (IsEscapedByte(text, i))
            {
                destination[written++] = (byte)(text[i] - EscapeBase);
            }
            else
            {
                var length = char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]) ? 2 : 1;
                written += Encoding.UTF8.GetBytes(text.AsSpan(i, length), destination[written..]);
                i += length - 1;
            }
        }

        return written;
    }

    private static bool HasEscapes(string text) => text.AsSpan().IndexOfAnyInRange('\uDC80', '\uDCFF') >= 0;

    // A low surrogate in U+DC80–U+DCFF that is not the second half of a pair stands for one raw byte.
    private static bool IsEscapedByte(string text, int i) =>
        text[i] is >= '\uDC80' and <= '\uDCFF' && (i == 0 || !char.IsHighSurrogate(text[i - 1]));
}

/// <summary>Base64 as Nix decodes it (<c>src/libutil/base-n.cc</c>): padding optional (decoding stops at the first
/// <c>=</c>), newlines skipped, any other character outside the alphabet an error.</summary>
public static class NixBase64
{
    /// <summary>Decodes <paramref name="text"/>; false on a character outside the alphabet.</summary>
    public static bool TryDecode(ReadOnlySpan<char> text, out byte[] bytes)
    {
        var result = new List<byte>(text.Length * 3 / 4);
        int bits = 0, accumulator = 0;
        bytes = [];
        foreach (var c in text)
        {
            if (c == '=')
            {
                break;
            }

            if (c == '\n')
            {
                continue;
            }

            var digit = c switch
            {
                >= 'A' and <= 'Z' => c - 'A',
                >= 'a' and <= 'z' => c - 'a' + 26,
                >= '0' and <= '9' => c - '0' + 52,
                '+' => 62,
                '/' => 63,
                _ => -1,
            };
            if (digit < 0)
            {
                return false;
            }

            accumulator = (accumulator << 6) | digit;
            bits += 6;
            if (bits >= 8)
            {
                bits -= 8;
                result.Add((byte)(accumulator >> bits));
                accumulator &= (1 << bits) - 1;
            }
        }

        bytes = [.. result];
        return true;
    }
}
