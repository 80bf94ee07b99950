using System.Buffers;
using System.Buffers.Binary;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Wire;

/// <summary>
/// Writers for the wire primitives (see <see cref="WireReader"/> for the encoding). Sets and maps are written in
/// sorted order, as Nix's <c>std::set</c>/<c>std::map</c> write them.
/// </summary>
public static class WireWriter
{
    public static void WriteU64(IBufferWriter<byte> writer, ulong value)
    {
        ArgumentNullException.ThrowIfNull(writer);
        BinaryPrimitives.WriteUInt64LittleEndian(writer.GetSpan(8), value);
        writer.Advance(8);
    }

    public static void WriteBool(IBufferWriter<byte> writer, bool value) => WriteU64(writer, value ? 1UL : 0UL);

    /// <summary>Writes a padded byte string.</summary>
    public static void WriteBytes(IBufferWriter<byte> writer, ReadOnlySpan<byte> value)
    {
        WriteU64(writer, (ulong)value.Length);
        var padded = (value.Length + 7) & ~7;
        var span = writer.GetSpan(padded);
        value.CopyTo(span);
        span[value.Length..padded].Clear();
        writer.Advance(padded);
    }

    /// <summary>Writes a string as the bytes it stands for (<see cref="NixString"/>).</summary>
    public static void WriteString(IBufferWriter<byte> writer, string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        var length = NixString.GetByteCount(value);
        WriteU64(writer, (ulong)length);
        var padded = (length + 7) & ~7;
        var span = writer.GetSpan(padded);
        NixString.Encode(value, span);
        span[length..padded].Clear();
        writer.Advance(padded);
    }

    /// <summary>Writes a list of strings in the given order.</summary>
    public static void WriteStrings(IBufferWriter<byte> writer, IReadOnlyCollection<string> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        WriteU64(writer, (ulong)values.Count);
        foreach (var value in values)
        {
            WriteString(writer, value);
        }
    }

    /// <summary>Writes a set of strings, sorted bytewise.</summary>
    public static void WriteStringSet(IEnumerable<string> values, IBufferWriter<byte> writer)
    {
        ArgumentNullException.ThrowIfNull(values);
        WriteStrings(writer, values.Distinct().Order(Derivations.Utf8Order.Comparer).ToList());
    }

    /// <summary>Writes a set of store paths as full paths, sorted.</summary>
    public static void WriteStorePaths(IBufferWriter<byte> writer, IEnumerable<StorePath> paths)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var sorted = paths.Distinct().Order().ToList();
        WriteU64(writer, (ulong)sorted.Count);
        foreach (var path in sorted)
        {
            WriteString(writer, path.FullPath);
        }
    }

    /// <summary>Writes a string map sorted by key.</summary>
    public static void WriteStringMap(IBufferWriter<byte> writer, IEnumerable<KeyValuePair<string, string>> map)
    {
        ArgumentNullException.ThrowIfNull(map);
        var sorted = map.OrderBy(p => p.Key, Derivations.Utf8Order.Comparer).ToList();
        WriteU64(writer, (ulong)sorted.Count);
        foreach (var (key, value) in sorted)
        {
            WriteString(writer, key);
            WriteString(writer, value);
        }
    }

    /// <summary>Writes one chunk of a framed stream (no padding). An empty chunk is not written: it would end the stream.</summary>
    public static void WriteFrame(IBufferWriter<byte> writer, ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
        {
            return;
        }

        WriteU64(writer, (ulong)data.Length);
        data.CopyTo(writer.GetSpan(data.Length));
        writer.Advance(data.Length);
    }

    /// <summary>Ends a framed stream.</summary>
    public static void WriteFrameEnd(IBufferWriter<byte> writer) => WriteU64(writer, 0);
}
