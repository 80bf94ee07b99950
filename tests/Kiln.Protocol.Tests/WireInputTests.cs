using System.IO.Pipelines;
using Kiln.Nix.Wire;
using Kiln.Protocol.Wire;

namespace Kiln.Protocol.Tests;

/// <summary>Values that arrive in many pieces are parsed as they come, not again from their start for every piece.</summary>
public class WireInputTests
{
    [Fact]
    public async Task A_string_map_arriving_in_pieces_is_parsed_once_not_once_per_piece()
    {
        // 20.4: SetOptions' map was re-parsed from its start whenever a piece arrived: quadratic in its size, and a
        // read-only key may send one. The writer here sends the next piece only after the reader looked at the last,
        // and the reader counts the bytes every look was offered: about the map's size once when entries are kept as
        // they arrive, about pieces/2 times its size when everything is parsed again.
        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: 0, useSynchronizationContext: false));
        var reader = new CountingReader(pipe.Reader);
        var input = new WireInput(reader, WireLimits.Default);
        var entries = Enumerable.Range(0, 5_000).Select(i => new KeyValuePair<string, string>($"option-{i}", new string('v', i % 50))).ToList();
        var bytes = new System.Buffers.ArrayBufferWriter<byte>();
        WireWriter.WriteU64(bytes, (ulong)entries.Count);
        foreach (var (key, value) in entries)
        {
            WireWriter.WriteString(bytes, key);
            WireWriter.WriteString(bytes, value);
        }

        const int Piece = 1000;
        var pieces = (bytes.WrittenCount + Piece - 1) / Piece;
        var read = input.ReadStringMapAsync(default).AsTask();
        for (var offset = 0; offset < bytes.WrittenCount; offset += Piece)
        {
            var looked = reader.Looks;
            await pipe.Writer.WriteAsync(bytes.WrittenMemory[offset..Math.Min(bytes.WrittenCount, offset + Piece)]);
            while (reader.Looks == looked && !read.IsCompleted)
            {
                await Task.Delay(1);
            }
        }

        var map = await read.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.Equal(entries, map);
        Assert.True(pieces > 100, $"{pieces} pieces");
        Assert.True(reader.BytesOffered < 3L * bytes.WrittenCount, $"the reader was offered {reader.BytesOffered} bytes for a map of {bytes.WrittenCount} in {pieces} pieces");
    }

    // Counts how often the parser looked at the buffered bytes, and how many bytes it was offered in all.
    private sealed class CountingReader(PipeReader inner) : PipeReader
    {
        private int _looks;

        public int Looks => Volatile.Read(ref _looks);

        public long BytesOffered { get; private set; }

        public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            var result = await inner.ReadAsync(cancellationToken);
            BytesOffered += result.Buffer.Length;
            Interlocked.Increment(ref _looks);
            return result;
        }

        public override bool TryRead(out ReadResult result) => inner.TryRead(out result);

        public override void AdvanceTo(SequencePosition consumed) => inner.AdvanceTo(consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) => inner.AdvanceTo(consumed, examined);

        public override void CancelPendingRead() => inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => inner.Complete(exception);
    }
}
