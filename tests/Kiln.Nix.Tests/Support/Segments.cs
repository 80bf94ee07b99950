using System.Buffers;

namespace Kiln.Nix.Tests.Support;

/// <summary>Builds multi-segment sequences, so readers are tested across segment boundaries.</summary>
public static class Segments
{
    public static ReadOnlySequence<byte> Split(byte[] data, params int[] splits)
    {
        var points = splits.Where(s => s > 0 && s < data.Length).Distinct().Order().Append(data.Length).ToList();
        Segment? first = null, last = null;
        var start = 0;
        foreach (var point in points)
        {
            var segment = new Segment(data.AsMemory(start, point - start), last);
            first ??= segment;
            last = segment;
            start = point;
        }

        if (first is null)
        {
            return ReadOnlySequence<byte>.Empty;
        }

        return new ReadOnlySequence<byte>(first, 0, last!, last!.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, Segment? previous)
        {
            Memory = memory;
            if (previous is not null)
            {
                RunningIndex = previous.RunningIndex + previous.Memory.Length;
                previous.Next = this;
            }
        }
    }
}
