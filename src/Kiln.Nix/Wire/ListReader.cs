using System.Buffers;

namespace Kiln.Nix.Wire;

/// <summary>
/// Reads a long list incrementally: each call takes the elements that have fully arrived and keeps them, so a
/// million-element list arriving in thousands of pieces is parsed once, not once per piece as a restartable
/// <see cref="WireReader.TryReadList{T}"/> retry would. Unlike the <c>TryRead…</c> methods it is stateful: bytes it
/// consumed before returning false belong to it and must not be offered again. One instance reads one list.
/// </summary>
public sealed class ListReader<T>(WireLimits limits, WireReader.ItemReader<T> readItem)
{
    private ulong? _count;
    private List<T> _items = [];

    /// <summary>Elements read so far.</summary>
    public int Received => _items.Count;

    /// <summary>Consumes what it can; true with the whole list once every element has arrived.</summary>
    public bool TryRead(ref SequenceReader<byte> reader, out List<T> items)
    {
        items = [];
        if (_count is null)
        {
            if (!WireReader.TryReadCount(ref reader, limits, out var count))
            {
                return false;
            }

            _count = count;
            _items = new List<T>((int)Math.Min(count, 1024));
        }

        while ((ulong)_items.Count < _count)
        {
            if (!readItem(ref reader, out var item))
            {
                return false;
            }

            _items.Add(item);
        }

        items = _items;
        return true;
    }
}
