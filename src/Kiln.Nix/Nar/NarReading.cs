using System.Buffers;

namespace Kiln.Nix.Nar;

/// <summary>Runs a <see cref="NarParser"/> over a stream that holds exactly one archive.</summary>
public static class NarReading
{
    private const int BufferSize = 256 * 1024;

    /// <summary>
    /// Parses the whole of <paramref name="input"/> as one NAR, reporting to <paramref name="visitor"/>.
    /// Returns the archive's size. Bytes after the archive are an error (<see cref="NarError.TrailingData"/>).
    /// </summary>
    public static long Parse(Stream input, INarVisitor visitor, NarLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(input);
        var parser = new NarParser(visitor, limits);
        var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
        try
        {
            int read;
            while ((read = input.Read(buffer, 0, BufferSize)) > 0)
            {
                FeedAll(parser, buffer.AsSpan(0, read));
            }

            parser.Finish();
            return parser.Position;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <inheritdoc cref="Parse"/>
    public static async Task<long> ParseAsync(Stream input, INarVisitor visitor, NarLimits? limits = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(input);
        var parser = new NarParser(visitor, limits);
        var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
        try
        {
            int read;
            while ((read = await input.ReadAsync(buffer.AsMemory(0, BufferSize), cancellationToken).ConfigureAwait(false)) > 0)
            {
                FeedAll(parser, buffer.AsSpan(0, read));
            }

            parser.Finish();
            return parser.Position;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // The stream holds one archive and nothing else: bytes the parser does not take are trailing garbage.
    private static void FeedAll(NarParser parser, ReadOnlySpan<byte> chunk)
    {
        if (parser.Feed(chunk) < chunk.Length)
        {
            throw new NarException(NarError.TrailingData, "trailing data after the end of the archive", parser.Position);
        }
    }
}
