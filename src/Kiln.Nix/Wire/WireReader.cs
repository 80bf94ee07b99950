using System.Buffers;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Wire;

/// <summary>
/// Readers for the primitives shared by the worker and serve protocols (Nix's <c>src/libutil/serialise.cc</c>):
/// <list type="bullet">
/// <item>integers of every width are 8 bytes little-endian; booleans are 0 or 1 and anything else is refused;</item>
/// <item>strings are a u64 length, the bytes, and zero padding to a multiple of 8 (non-zero padding is refused);</item>
/// <item>lists and sets are a u64 count and the elements; maps a count and key/value pairs.</item>
/// </list>
/// Every <c>TryRead…</c> is restartable: when the buffered input ends inside the value it returns false and leaves the
/// reader where it was, so the caller can wait for more bytes and try again. Grammar and limit violations throw
/// <see cref="WireFormatException"/> (an invalid store path, <see cref="BadStorePathException"/>); limits are checked
/// before anything is allocated. A throw leaves the reader at the start of the offending value, somewhere inside
/// the message: the request cannot be read, and the session should report the error and close the connection, as
/// Nix's daemon does for errors raised while it reads a request. For very long lists arriving in many small pieces,
/// <see cref="ListReader{T}"/> avoids re-reading the elements already received on every retry.
/// </summary>
public static class WireReader
{
    /// <summary>Reads a u64.</summary>
    public static bool TryReadU64(ref SequenceReader<byte> reader, out ulong value)
    {
        if (reader.TryReadLittleEndian(out long signed))
        {
            value = (ulong)signed;
            return true;
        }

        value = 0;
        return false;
    }

    /// <summary>Reads a boolean (0 or 1).</summary>
    public static bool TryReadBool(ref SequenceReader<byte> reader, out bool value)
    {
        var start = reader.Consumed;
        if (!TryReadU64(ref reader, out var raw))
        {
            value = false;
            return false;
        }

        if (raw > 1)
        {
            reader.Rewind(reader.Consumed - start);
            throw new WireFormatException($"invalid boolean {raw} (expected 0 or 1)");
        }

        value = raw == 1;
        return true;
    }

    /// <summary>Reads a u64 that must fit in a signed 64-bit integer.</summary>
    public static bool TryReadInt64(ref SequenceReader<byte> reader, out long value)
    {
        if (!TryReadU64(ref reader, out var raw))
        {
            value = 0;
            return false;
        }

        if (raw > long.MaxValue)
        {
            reader.Rewind(8);
            throw new WireFormatException($"integer {raw} is too large");
        }

        value = (long)raw;
        return true;
    }

    /// <summary>Reads a padded byte string of at most <paramref name="maxLength"/> bytes, without copying it.</summary>
    public static bool TryReadBytes(ref SequenceReader<byte> reader, int maxLength, out ReadOnlySequence<byte> value)
    {
        value = default;
        var start = reader.Consumed;
        if (!TryReadU64(ref reader, out var length))
        {
            return false;
        }

        if (length > (ulong)maxLength)
        {
            reader.Rewind(reader.Consumed - start);
            throw new WireFormatException($"string of {length} bytes exceeds the limit of {maxLength}");
        }

        var padded = (long)((length + 7) & ~7UL);
        if (reader.Remaining < padded)
        {
            reader.Rewind(reader.Consumed - start);
            return false;
        }

        value = reader.UnreadSequence.Slice(0, (long)length);
        var padding = reader.UnreadSequence.Slice((long)length, padded - (long)length);
        if (!IsZero(padding))
        {
            reader.Rewind(reader.Consumed - start);
            throw new WireFormatException("non-zero padding");
        }

        reader.Advance(padded);
        return true;
    }

    /// <summary>Reads a padded string (bytes kept losslessly, see <see cref="NixString"/>).</summary>
    public static bool TryReadString(ref SequenceReader<byte> reader, int maxLength, out string value)
    {
        if (!TryReadBytes(ref reader, maxLength, out var bytes))
        {
            value = "";
            return false;
        }

        value = Decode(bytes);
        return true;
    }

    /// <summary>Reads a full store path; a string that is not one throws <see cref="BadStorePathException"/>.</summary>
    public static bool TryReadStorePath(ref SequenceReader<byte> reader, out StorePath value)
    {
        // A store path is at most "/nix/store/" + 32 + 1 + 211 characters; allow for a non-canonical spelling.
        var start = reader.Consumed;
        value = default;
        if (!TryReadString(ref reader, 1024, out var text))
        {
            return false;
        }

        if (!StorePath.TryParse(text, out value, out var error))
        {
            reader.Rewind(reader.Consumed - start);
            throw new BadStorePathException(error!);
        }

        return true;
    }

    /// <summary>Reads a store path, or none when the string is empty (Nix's optional store path).</summary>
    public static bool TryReadOptionalStorePath(ref SequenceReader<byte> reader, out StorePath? value)
    {
        value = null;
        var start = reader.Consumed;
        if (!TryReadString(ref reader, 1024, out var text))
        {
            return false;
        }

        if (text.Length == 0)
        {
            return true;
        }

        if (!StorePath.TryParse(text, out var path, out var error))
        {
            reader.Rewind(reader.Consumed - start);
            throw new BadStorePathException(error!);
        }

        value = path;
        return true;
    }

    /// <summary>Reads one element of a list; same contract as the other <c>TryRead…</c> methods.</summary>
    public delegate bool ItemReader<T>(ref SequenceReader<byte> reader, out T item);

    /// <summary>Reads a count and that many elements; restartable as a whole.</summary>
    public static bool TryReadList<T>(ref SequenceReader<byte> reader, WireLimits limits, ItemReader<T> readItem, out List<T> values)
    {
        ArgumentNullException.ThrowIfNull(limits);
        ArgumentNullException.ThrowIfNull(readItem);
        var start = reader.Consumed;
        values = [];
        if (!TryReadCount(ref reader, limits, out var count))
        {
            return false;
        }

        // Never trust the count for the allocation: grow as elements actually arrive.
        values.Capacity = (int)Math.Min(count, 1024);
        for (var i = 0UL; i < count; i++)
        {
            if (!readItem(ref reader, out var item))
            {
                reader.Rewind(reader.Consumed - start);
                values = [];
                return false;
            }

            values.Add(item);
        }

        return true;
    }

    /// <summary>Reads a list (or set) of strings.</summary>
    public static bool TryReadStrings(ref SequenceReader<byte> reader, WireLimits limits, out List<string> values)
    {
        ArgumentNullException.ThrowIfNull(limits);
        var maxLength = limits.MaxStringLength;
        return TryReadList(ref reader, limits, (ref SequenceReader<byte> r, out string item) => TryReadString(ref r, maxLength, out item), out values);
    }

    /// <summary>Reads a set of store paths.</summary>
    public static bool TryReadStorePaths(ref SequenceReader<byte> reader, WireLimits limits, out SortedSet<StorePath> values)
    {
        var ok = TryReadList<StorePath>(ref reader, limits, TryReadStorePath, out var list);
        values = ok ? [.. list] : [];
        return ok;
    }

    /// <summary>Reads a map of strings to strings.</summary>
    public static bool TryReadStringMap(ref SequenceReader<byte> reader, WireLimits limits, out List<KeyValuePair<string, string>> values)
    {
        ArgumentNullException.ThrowIfNull(limits);
        var maxLength = limits.MaxStringLength;
        return TryReadList(ref reader, limits, (ref SequenceReader<byte> r, out KeyValuePair<string, string> item) => TryReadStringPair(ref r, maxLength, out item), out values);
    }

    /// <summary>Reads one entry of a string map (a key, then its value); restartable.</summary>
    public static bool TryReadStringPair(ref SequenceReader<byte> reader, int maxLength, out KeyValuePair<string, string> item)
    {
        item = default;
        // Nothing is decoded until both strings are buffered: a large key whose value trickles in byte by byte would
        // otherwise be decoded again for every piece.
        if (!StringsBuffered(reader, 2, maxLength))
        {
            return false;
        }

        var start = reader.Consumed;
        if (TryReadString(ref reader, maxLength, out var key) && TryReadString(ref reader, maxLength, out var value))
        {
            item = new(key, value);
            return true;
        }

        reader.Rewind(reader.Consumed - start);
        return false;
    }

    // Whether `count` strings are wholly buffered (or one is over-long, which the reader proper then reports); reads a
    // copy of the reader, so nothing is consumed.
    private static bool StringsBuffered(SequenceReader<byte> reader, int count, int maxLength)
    {
        for (var i = 0; i < count; i++)
        {
            if (!TryReadU64(ref reader, out var length))
            {
                return false;
            }

            if (length > (ulong)maxLength)
            {
                return true;
            }

            var padded = (long)((length + 7) & ~7UL);
            if (reader.Remaining < padded)
            {
                return false;
            }

            reader.Advance(padded);
        }

        return true;
    }

    /// <summary>Reads the element count of a list, set or map.</summary>
    public static bool TryReadCount(ref SequenceReader<byte> reader, WireLimits limits, out ulong count)
    {
        ArgumentNullException.ThrowIfNull(limits);
        var start = reader.Consumed;
        if (!TryReadU64(ref reader, out count))
        {
            return false;
        }

        if (count > (ulong)limits.MaxListCount)
        {
            reader.Rewind(reader.Consumed - start);
            throw new WireFormatException($"list of {count} elements exceeds the limit of {limits.MaxListCount}");
        }

        return true;
    }

    /// <summary>Decodes a Nix string losslessly (<see cref="NixString"/>).</summary>
    public static string Decode(ReadOnlySequence<byte> bytes) =>
        bytes.IsSingleSegment ? NixString.Decode(bytes.FirstSpan) : NixString.Decode(bytes.ToArray());

    private static bool IsZero(ReadOnlySequence<byte> bytes)
    {
        foreach (var segment in bytes)
        {
            if (segment.Span.ContainsAnyExcept((byte)0))
            {
                return false;
            }
        }

        return true;
    }
}
