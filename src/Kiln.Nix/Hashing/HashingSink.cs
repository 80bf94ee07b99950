using System.Security.Cryptography;

namespace Kiln.Nix.Hashing;

/// <summary>
/// Hashes bytes as they pass (Nix's <c>HashSink</c>) and counts them, so a NAR can be hashed while it
/// streams to disk or to a client without being held in memory.
/// </summary>
public sealed class HashingSink : IDisposable
{
    // Created on first use: initialising OpenSSL costs ~20 ms, which a pipelined writer pays on its own thread
    // while the producer is already reading files.
    private IncrementalHash? _hash;

    public HashingSink(NixHashAlgorithm algorithm)
    {
        Algorithm = algorithm;
    }

    private IncrementalHash Hash => _hash ??= IncrementalHash.CreateHash(Algorithm.DotNetName());

    /// <summary>The algorithm being computed.</summary>
    public NixHashAlgorithm Algorithm { get; }

    /// <summary>The number of bytes hashed so far.</summary>
    public long BytesWritten { get; private set; }

    /// <summary>Adds <paramref name="data"/> to the hash.</summary>
    public void Append(ReadOnlySpan<byte> data)
    {
        Hash.AppendData(data);
        BytesWritten += data.Length;
    }

    /// <summary>Finishes the hash; the sink starts over afterwards.</summary>
    public NixHash Finish()
    {
        Span<byte> digest = stackalloc byte[Algorithm.Size()];
        Hash.GetHashAndReset(digest);
        BytesWritten = 0;
        return new NixHash(Algorithm, digest);
    }

    public void Dispose() => _hash?.Dispose();
}

/// <summary>A write-only stream that hashes what is written to it and forwards it to an optional inner stream.</summary>
public sealed class HashingStream(NixHashAlgorithm algorithm, Stream? inner = null) : Stream
{
    private readonly HashingSink _sink = new(algorithm);

    /// <summary>Bytes written so far.</summary>
    public long BytesWritten => _sink.BytesWritten;

    /// <summary>The hash of everything written so far (resets the stream's hash).</summary>
    public NixHash Finish() => _sink.Finish();

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => BytesWritten; set => throw new NotSupportedException(); }

    public override void Flush() => inner?.Flush();

    public override Task FlushAsync(CancellationToken cancellationToken) =>
        inner?.FlushAsync(cancellationToken) ?? Task.CompletedTask;

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        _sink.Append(buffer);
        inner?.Write(buffer);
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        _sink.Append(buffer.Span);
        if (inner is not null)
        {
            await inner.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _sink.Dispose();
        }

        base.Dispose(disposing);
    }
}
