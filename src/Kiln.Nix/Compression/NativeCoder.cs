namespace Kiln.Nix.Compression;

/// <summary>
/// A read-only stream over a native streaming coder (a decoder, or an encoder): it reads input in blocks from the
/// inner stream and lets <see cref="Step"/> turn it into output. For a decoder, data after the end of the compressed
/// stream, or input that ends before it, is an error (a truncated download must never look like a short NAR); an
/// encoder ends only once its input has.
/// </summary>
internal abstract class NativeCoder(Stream inner) : ReadOnlyStream
{
    private readonly byte[] _input = new byte[128 * 1024];
    private int _inputStart;
    private int _inputEnd;
    private bool _innerDone;
    private bool _finished;
    private bool _disposed;

    protected abstract string Name { get; }

    /// <summary>Codes from <paramref name="input"/> into <paramref name="output"/>: what it consumed and produced, and whether the stream ended.</summary>
    protected abstract (int Consumed, int Produced, bool End) Step(ReadOnlySpan<byte> input, Span<byte> output, bool inputDone);

    protected abstract void Free();

    public override int Read(Span<byte> buffer)
    {
        int produced;
        while ((produced = Decode(buffer)) < 0)
        {
            Filled(inner.Read(_input));
        }

        return produced;
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        int produced;
        while ((produced = Decode(buffer.Span)) < 0)
        {
            Filled(await inner.ReadAsync(_input, cancellationToken).ConfigureAwait(false));
        }

        return produced;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    private void Filled(int count)
    {
        (_inputStart, _inputEnd, _innerDone) = (0, count, count == 0);
    }

    // Decodes what input there is into buffer: the bytes produced (0 at the end), or -1 when it needs more input.
    private int Decode(Span<byte> buffer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        while (!_finished && buffer.Length > 0)
        {
            if (_inputStart == _inputEnd && !_innerDone)
            {
                return -1;
            }

            var (consumed, produced, end) = Step(_input.AsSpan(_inputStart, _inputEnd - _inputStart), buffer, _innerDone);
            _inputStart += consumed;
            if (end)
            {
                _finished = true;
                if (_inputStart != _inputEnd || (!_innerDone && inner.Read(_input.AsSpan(0, 1)) != 0))
                {
                    throw new DecompressionException($"{Name} data has trailing garbage");
                }
            }

            if (produced > 0)
            {
                return produced;
            }

            if (!end && consumed == 0 && _innerDone && _inputStart == _inputEnd)
            {
                throw new DecompressionException($"{Name} data ends too early");
            }
        }

        return 0;
    }

    protected override void Dispose(bool disposing)
    {
        if (!_disposed)
        {
            _disposed = true;
            Free();
            if (disposing)
            {
                inner.Dispose();
            }
        }

        base.Dispose(disposing);
    }

    ~NativeCoder() => Dispose(false);
}
