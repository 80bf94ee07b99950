using System.Buffers;
using System.IO.Pipelines;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Wire;

namespace Kiln.Protocol.Wire;

/// <summary>
/// Reads protocol values from a <see cref="PipeReader"/>, waiting for more bytes when a value is incomplete. Values
/// are parsed with the restartable readers of <see cref="WireReader"/>; long lists with <see cref="ListReader{T}"/>
/// so a list arriving in many pieces is parsed once. The end of input in the middle of a value is a
/// <see cref="ProtocolViolationException"/>; every limit is enforced before allocating.
/// </summary>
public sealed class WireInput(PipeReader reader, WireLimits limits)
{
    /// <summary>Parses one value from buffered bytes; restartable (false = need more, nothing consumed).</summary>
    public delegate bool Parse<T>(ref SequenceReader<byte> reader, out T value);

    /// <summary>Parses from buffered bytes, keeping state between calls (consumption on false allowed).</summary>
    public delegate bool ParseIncremental<T>(ref SequenceReader<byte> reader, out T value);

    public WireLimits Limits { get; } = limits;

    public PipeReader Reader { get; } = reader;

    /// <summary>Bytes consumed so far.</summary>
    public long BytesRead { get; private set; }

    /// <summary>Reads one value; Ok is false when the input ended cleanly before its first byte.</summary>
    public async ValueTask<(bool Ok, T Value)> TryReadFirstAsync<T>(Parse<T> parse, CancellationToken cancellationToken)
    {
        while (true)
        {
            var result = await Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            var buffer = result.Buffer;
            if (buffer.IsEmpty && result.IsCompleted)
            {
                Reader.AdvanceTo(buffer.Start);
                return (false, default!);
            }

            bool parsed;
            T value;
            SequencePosition consumed;
            try
            {
                parsed = TryParse(buffer, parse, out value, out consumed);
            }
            catch
            {
                // Leave the reader usable (nothing consumed) whatever the parser threw.
                Reader.AdvanceTo(buffer.Start);
                throw;
            }

            if (parsed)
            {
                Reader.AdvanceTo(consumed);
                return (true, value);
            }

            Reader.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                throw new ProtocolViolationException("the connection closed in the middle of a message");
            }
        }
    }

    /// <summary>Reads one value, waiting for its bytes.</summary>
    public async ValueTask<T> ReadAsync<T>(Parse<T> parse, CancellationToken cancellationToken)
    {
        var (ok, value) = await TryReadFirstAsync(parse, cancellationToken).ConfigureAwait(false);
        return ok ? value : throw new ProtocolViolationException("the connection closed in the middle of a message");
    }

    /// <summary>Reads a value with a stateful parser that may consume part of it on each attempt.</summary>
    public async ValueTask<T> ReadIncrementalAsync<T>(ParseIncremental<T> parse, CancellationToken cancellationToken)
    {
        while (true)
        {
            var result = await Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            var sequenceReader = new SequenceReader<byte>(result.Buffer);
            bool done;
            T value;
            try
            {
                done = parse(ref sequenceReader, out value);
            }
            catch
            {
                Reader.AdvanceTo(result.Buffer.Start);
                throw;
            }

            BytesRead += sequenceReader.Consumed;
            Reader.AdvanceTo(sequenceReader.Position, done ? sequenceReader.Position : result.Buffer.End);
            if (done)
            {
                return value;
            }

            if (result.IsCompleted)
            {
                throw new ProtocolViolationException("the connection closed in the middle of a message");
            }
        }
    }

    private bool TryParse<T>(ReadOnlySequence<byte> buffer, Parse<T> parse, out T value, out SequencePosition consumed)
    {
        var sequenceReader = new SequenceReader<byte>(buffer);
        if (parse(ref sequenceReader, out value))
        {
            consumed = sequenceReader.Position;
            BytesRead += sequenceReader.Consumed;
            return true;
        }

        consumed = buffer.Start;
        return false;
    }

    public ValueTask<ulong> ReadU64Async(CancellationToken cancellationToken) =>
        ReadAsync<ulong>(WireReader.TryReadU64, cancellationToken);

    public ValueTask<bool> ReadBoolAsync(CancellationToken cancellationToken) =>
        ReadAsync<bool>(WireReader.TryReadBool, cancellationToken);

    public ValueTask<long> ReadInt64Async(CancellationToken cancellationToken) =>
        ReadAsync<long>(WireReader.TryReadInt64, cancellationToken);

    public ValueTask<string> ReadStringAsync(CancellationToken cancellationToken) => ReadStringAsync(Limits.MaxStringLength, cancellationToken);

    public ValueTask<string> ReadStringAsync(int maxLength, CancellationToken cancellationToken) =>
        ReadAsync((ref SequenceReader<byte> r, out string v) => WireReader.TryReadString(ref r, maxLength, out v), cancellationToken);

    public ValueTask<StorePath> ReadStorePathAsync(CancellationToken cancellationToken) =>
        ReadAsync<StorePath>(WireReader.TryReadStorePath, cancellationToken);

    public ValueTask<StorePath?> ReadOptionalStorePathAsync(CancellationToken cancellationToken) =>
        ReadAsync<StorePath?>(WireReader.TryReadOptionalStorePath, cancellationToken);

    public async ValueTask<SortedSet<StorePath>> ReadStorePathsAsync(CancellationToken cancellationToken)
    {
        var list = new ListReader<StorePath>(Limits, WireReader.TryReadStorePath);
        var items = await ReadIncrementalAsync((ref SequenceReader<byte> r, out List<StorePath> v) => list.TryRead(ref r, out v), cancellationToken).ConfigureAwait(false);
        return [.. items];
    }

    public ValueTask<List<string>> ReadStringsAsync(CancellationToken cancellationToken)
    {
        var maxLength = Limits.MaxStringLength;
        var list = new ListReader<string>(Limits, (ref SequenceReader<byte> r, out string v) => WireReader.TryReadString(ref r, maxLength, out v));
        return ReadIncrementalAsync((ref SequenceReader<byte> r, out List<string> v) => list.TryRead(ref r, out v), cancellationToken);
    }

    // Incremental like the lists: re-parsed from its start whenever a piece arrived, a map as big as the limits allow
    // (SetOptions' overrides, which even a read-only key may send) cost quadratic time.
    // A map is at most as large as one string may be, in all: what accumulates is bounded, not only each entry.
    public ValueTask<List<KeyValuePair<string, string>>> ReadStringMapAsync(CancellationToken cancellationToken)
    {
        var maxLength = Limits.MaxStringLength;
        long total = 0;
        var map = new ListReader<KeyValuePair<string, string>>(Limits, (ref SequenceReader<byte> r, out KeyValuePair<string, string> v) =>
        {
            var start = r.Consumed;
            if (!WireReader.TryReadStringPair(ref r, maxLength, out v))
            {
                return false;
            }

            total += r.Consumed - start;
            return total <= maxLength ? true : throw new WireFormatException($"a string map larger than {maxLength} bytes");
        });
        return ReadIncrementalAsync((ref SequenceReader<byte> r, out List<KeyValuePair<string, string>> v) => map.TryRead(ref r, out v), cancellationToken);
    }

    /// <summary>
    /// Copies up to <paramref name="destination"/>.Length raw bytes that are already buffered or arrive next;
    /// returns 0 only at the end of input.
    /// </summary>
    public async ValueTask<int> ReadRawAsync(Memory<byte> destination, CancellationToken cancellationToken)
    {
        if (destination.IsEmpty)
        {
            return 0;
        }

        var result = await Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        var buffer = result.Buffer;
        var take = (int)Math.Min(buffer.Length, destination.Length);
        buffer.Slice(0, take).CopyTo(destination.Span);
        Reader.AdvanceTo(buffer.GetPosition(take));
        BytesRead += take;
        return take;
    }

    /// <summary>Runs a callback over buffered raw bytes: it returns how many it used (and whether it is done).</summary>
    public async ValueTask ConsumeRawAsync(Func<ReadOnlySequence<byte>, (long Used, bool Done)> consume, CancellationToken cancellationToken)
    {
        while (true)
        {
            var result = await Reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            var buffer = result.Buffer;
            long used;
            bool done;
            try
            {
                (used, done) = buffer.IsEmpty ? (0, false) : consume(buffer);
            }
            catch
            {
                Reader.AdvanceTo(buffer.Start);
                throw;
            }

            BytesRead += used;
            Reader.AdvanceTo(buffer.GetPosition(used), done ? buffer.GetPosition(used) : buffer.End);
            if (done)
            {
                return;
            }

            if (result.IsCompleted)
            {
                throw new ProtocolViolationException("the connection closed in the middle of a message");
            }
        }
    }
}
