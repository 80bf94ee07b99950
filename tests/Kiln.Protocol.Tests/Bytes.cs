using System.Buffers;
using Kiln.Nix;
using Kiln.Nix.Wire;

namespace Kiln.Protocol.Tests;

/// <summary>Builds wire bytes by hand: what a client sends, or what the server is expected to answer.</summary>
public sealed class Bytes
{
    private readonly ArrayBufferWriter<byte> _buffer = new();

    public Bytes U64(ulong value)
    {
        WireWriter.WriteU64(_buffer, value);
        return this;
    }

    public Bytes Bool(bool value) => U64(value ? 1UL : 0UL);

    public Bytes Str(string value)
    {
        WireWriter.WriteString(_buffer, value);
        return this;
    }

    public Bytes Raw(ReadOnlySpan<byte> value)
    {
        _buffer.Write(value);
        return this;
    }

    public Bytes Strs(params string[] values)
    {
        WireWriter.WriteStrings(_buffer, values);
        return this;
    }

    /// <summary>A framed stream of <paramref name="data"/> in chunks of <paramref name="chunk"/> bytes, and its terminator.</summary>
    public Bytes Framed(ReadOnlySpan<byte> data, int chunk = 7)
    {
        for (var i = 0; i < data.Length; i += chunk)
        {
            WireWriter.WriteFrame(_buffer, data.Slice(i, Math.Min(chunk, data.Length - i)));
        }

        WireWriter.WriteFrameEnd(_buffer);
        return this;
    }

    public Bytes Then(Bytes other)
    {
        _buffer.Write(other.ToArray());
        return this;
    }

    public byte[] ToArray() => _buffer.WrittenSpan.ToArray();

    public static Bytes New() => new();

    // Daemon messages.
    public const ulong Last = 0x616c7473;
    public const ulong Error = 0x63787470;
    public const ulong Next = 0x6f6c6d67;
    public const ulong Read = 0x64617461;

    /// <summary>An error frame as the version writes it.</summary>
    public Bytes ErrorFrame(ProtocolVersion version, string message, ulong status = 1)
    {
        U64(Error);
        if (version.AtLeast(26))
        {
            return Str("Error").U64(0).Str("Error").Str(message).U64(0).U64(0);
        }

        return Str(message).U64(status);
    }

    /// <summary>The bytes of a Nix string.</summary>
    public static byte[] Of(string text) => NixString.Encode(text);
}
