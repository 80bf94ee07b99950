using System.Buffers;
using Kiln.Nix.Nar;
using Kiln.Nix.Wire;

namespace Kiln.Protocol.Wire;

/// <summary>
/// A read-only stream over part of a protocol connection: the NAR or data that follows a request, in whichever form
/// the protocol version uses. The store reads it like any stream; <see cref="DrainAsync"/> consumes whatever the
/// store did not, so the connection stays in step when an upload is refused half-way.
/// </summary>
public abstract class PayloadStream : Kiln.Nix.ReadOnlyStream
{

    // The session only reads asynchronously; synchronous reads would block a thread on the network.
    public override int Read(byte[] buffer, int offset, int count) =>
        ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public abstract override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default);

    /// <summary>Reads and discards the rest of the payload.</summary>
    public async ValueTask DrainAsync(CancellationToken cancellationToken)
    {
        var scratch = ArrayPool<byte>.Shared.Rent(64 * 1024);
        try
        {
            while (await ReadAsync(scratch, cancellationToken).ConfigureAwait(false) > 0)
            {
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }
}

/// <summary>Exactly <c>length</c> raw bytes (AddMultipleToStore's NARs, the serve protocol's AddToStoreNar).</summary>
public sealed class CountedPayloadStream(WireInput input, long length) : PayloadStream
{
    private long _remaining = length;

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_remaining == 0)
        {
            return 0;
        }

        var read = await input.ReadRawAsync(buffer[..(int)Math.Min(buffer.Length, _remaining)], cancellationToken).ConfigureAwait(false);
        if (read == 0)
        {
            throw new ProtocolViolationException("the connection closed in the middle of a NAR");
        }

        _remaining -= read;
        return read;
    }
}

/// <summary>A framed stream (worker ≥ 1.23): chunks of u64 length + bytes, ended by a zero length.</summary>
public sealed class FramedPayloadStream(WireInput input) : PayloadStream
{
    private readonly FramedReader _framed = new(input.Limits);

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_framed.IsComplete || buffer.IsEmpty)
        {
            return 0;
        }

        var copied = 0;
        await input.ConsumeRawAsync(sequence =>
        {
            var reader = new SequenceReader<byte>(sequence);
            var result = _framed.TryRead(ref reader, buffer.Length, out var payload);
            if (result == FramedReadResult.Data)
            {
                payload.CopyTo(buffer.Span);
                copied = (int)payload.Length;
                return (reader.Consumed, true);
            }

            return (reader.Consumed, result == FramedReadResult.End);
        }, cancellationToken).ConfigureAwait(false);
        return copied;
    }
}

/// <summary>
/// Data the server pulls with STDERR_READ (worker 1.21–1.22, Nix 2.3's AddToStoreNar): the server asks for up to
/// <c>chunk</c> bytes, the client answers with a string, until <c>length</c> bytes have come.
/// </summary>
public sealed class PulledPayloadStream(WireInput input, WireOutput output, long length) : PayloadStream
{
    private const ulong StderrRead = 0x64617461;
    private const int Chunk = 64 * 1024;
    private long _remaining = length;
    private byte[] _pending = [];
    private int _pendingOffset;

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_pendingOffset == _pending.Length)
        {
            if (_remaining == 0)
            {
                return 0;
            }

            output.WriteU64(StderrRead);
            output.WriteU64((ulong)Math.Min(_remaining, Chunk));
            await output.FlushAsync(cancellationToken).ConfigureAwait(false);
            var answer = await input.ReadAsync((ref SequenceReader<byte> r, out byte[] v) =>
            {
                var ok = WireReader.TryReadBytes(ref r, Chunk, out var bytes);
                v = ok ? bytes.ToArray() : [];
                return ok;
            }, cancellationToken).ConfigureAwait(false);
            if (answer.Length == 0 || answer.Length > _remaining)
            {
                throw new ProtocolViolationException($"the client sent {answer.Length} bytes when {Math.Min(_remaining, Chunk)} were asked for");
            }

            _pending = answer;
            _pendingOffset = 0;
            _remaining -= answer.Length;
        }

        var take = Math.Min(buffer.Length, _pending.Length - _pendingOffset);
        _pending.AsSpan(_pendingOffset, take).CopyTo(buffer.Span);
        _pendingOffset += take;
        return take;
    }
}

/// <summary>
/// An unframed NAR (worker &lt; 1.25 AddToStore, the export format): its end is found by parsing it as it passes.
/// A malformed NAR has no findable end, so it is a protocol violation.
/// </summary>
public sealed class DelimitedNarStream(WireInput input, NarLimits? limits = null) : PayloadStream
{
    private readonly NarParser _parser = new(new NarVisitor(), limits);

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_parser.IsComplete || buffer.IsEmpty)
        {
            return 0;
        }

        var copied = 0;
        await input.ConsumeRawAsync(sequence =>
        {
            var piece = sequence.Slice(0, Math.Min(sequence.Length, buffer.Length));
            var used = 0;
            try
            {
                foreach (var segment in piece)
                {
                    var n = _parser.Feed(segment.Span);
                    segment.Span[..n].CopyTo(buffer.Span[used..]);
                    used += n;
                    if (_parser.IsComplete)
                    {
                        break;
                    }
                }
            }
            catch (NarException e)
            {
                throw new ProtocolViolationException($"the NAR in the request is malformed: {e.Message}");
            }

            copied = used;
            return (used, true);
        }, cancellationToken).ConfigureAwait(false);
        return copied;
    }
}
