using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Kiln.Nix.Tests.Support;

/// <summary>Writes NAR tokens by hand, so tests can build archives the writer would never produce.</summary>
public sealed class NarBuilder
{
    private readonly ArrayBufferWriter<byte> _bytes = new();

    public static NarBuilder Start() => new NarBuilder().Str("nix-archive-1");

    public NarBuilder Str(string token) => Raw(Encoding.UTF8.GetBytes(token));

    public NarBuilder Raw(ReadOnlySpan<byte> token, byte padByte = 0)
    {
        U64((ulong)token.Length);
        _bytes.Write(token);
        for (var i = token.Length; i % 8 != 0; i++)
        {
            _bytes.Write([padByte]);
        }

        return this;
    }

    public NarBuilder U64(ulong value)
    {
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, value);
        _bytes.Write(bytes);
        return this;
    }

    public NarBuilder Bytes(params byte[] bytes)
    {
        _bytes.Write(bytes);
        return this;
    }

    public NarBuilder Tokens(params string[] tokens)
    {
        foreach (var token in tokens)
        {
            Str(token);
        }

        return this;
    }

    public NarBuilder File(string contents, bool executable = false)
    {
        Tokens("(", "type", "regular");
        if (executable)
        {
            Tokens("executable", "");
        }

        return Tokens("contents", contents, ")");
    }

    public NarBuilder Symlink(string target) => Tokens("(", "type", "symlink", "target", target, ")");

    public NarBuilder OpenDirectory() => Tokens("(", "type", "directory");

    public NarBuilder OpenEntry(string name) => Tokens("entry", "(", "name", name, "node");

    public NarBuilder CloseEntry() => Str(")");

    public NarBuilder CloseDirectory() => Str(")");

    public NarBuilder Entry(string name, Func<NarBuilder, NarBuilder> node) => node(OpenEntry(name)).CloseEntry();

    public byte[] ToArray() => _bytes.WrittenSpan.ToArray();
}
