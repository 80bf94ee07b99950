using Kiln.Nix.References;

namespace Kiln.Farm;

/// <summary>A read-only stream that passes its source's bytes on and scans them for store path references as they go.</summary>
internal sealed class ScanningStream(Stream source, ReferenceScanner scanner) : Kiln.Nix.ReadOnlyStream
{
    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        var read = source.Read(buffer);
        scanner.Scan(buffer[..read]);
        return read;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        var read = await source.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        scanner.Scan(buffer.Span[..read]);
        return read;
    }
}
