using System.Buffers;

namespace Kiln.Nix.Wire;

/// <summary>What <see cref="FramedReader"/>.TryRead produced.</summary>
public enum FramedReadResult
{
    /// <summary>More input is needed.</summary>
    NeedMoreData,

    /// <summary>A piece of payload is available.</summary>
    Data,

    /// <summary>The zero-length terminator was read; the stream is over.</summary>
    End,
}

/// <summary>
/// Decodes a framed stream (worker protocol ≥ 1.23 for AddToStoreNar, AddToStore ≥ 1.25, AddMultipleToStore,
/// AddBuildLog): chunks of <c>u64 length</c> + that many raw bytes (no padding), ended by a zero length. Payload is
/// handed out as soon as it arrives, in pieces of any size, so a frame never has to be buffered whole. It remembers
/// how much of the current frame is left, so it is stateful; but when it returns
/// <see cref="FramedReadResult.NeedMoreData"/> it has consumed nothing, so the same bytes can be offered again.
/// </summary>
public sealed class FramedReader(WireLimits? limits = null)
{
    private readonly WireLimits _limits = limits ?? WireLimits.Default;
    private ulong _remainingInFrame;

    /// <summary>Whether the terminator has been read.</summary>
    public bool IsComplete { get; private set; }

    /// <summary>Total payload bytes returned so far.</summary>
    public long PayloadLength { get; private set; }

    /// <summary>
    /// Reads the next piece: payload (consumed from <paramref name="reader"/>), the end of the stream, or a request
    /// for more input. <paramref name="payload"/> is valid until the reader's buffer is released.
    /// </summary>
    public FramedReadResult TryRead(ref SequenceReader<byte> reader, out ReadOnlySequence<byte> payload) =>
        TryRead(ref reader, long.MaxValue, out payload);

    /// <summary>As <see cref="TryRead(ref SequenceReader{byte}, out ReadOnlySequence{byte})"/>, handing out at most <paramref name="maxLength"/> bytes of payload.</summary>
    public FramedReadResult TryRead(ref SequenceReader<byte> reader, long maxLength, out ReadOnlySequence<byte> payload)
    {
        payload = default;
        if (IsComplete)
        {
            return FramedReadResult.End;
        }

        if (_remainingInFrame == 0)
        {
            if (!WireReader.TryReadU64(ref reader, out var length))
            {
                return FramedReadResult.NeedMoreData;
            }

            if (length == 0)
            {
                IsComplete = true;
                return FramedReadResult.End;
            }

            if (length > (ulong)_limits.MaxFrameLength)
            {
                reader.Rewind(8);
                throw new WireFormatException($"frame of {length} bytes exceeds the limit of {_limits.MaxFrameLength}");
            }

            if (reader.End)
            {
                // Take the header only together with some payload, so "need more data" consumes nothing.
                reader.Rewind(8);
                return FramedReadResult.NeedMoreData;
            }

            _remainingInFrame = length;
        }

        if (reader.End)
        {
            return FramedReadResult.NeedMoreData;
        }

        var take = (long)Math.Min(Math.Min(_remainingInFrame, (ulong)reader.Remaining), (ulong)Math.Max(1, maxLength));
        payload = reader.UnreadSequence.Slice(0, take);
        reader.Advance(take);
        _remainingInFrame -= (ulong)take;
        PayloadLength += take;
        return FramedReadResult.Data;
    }
}
