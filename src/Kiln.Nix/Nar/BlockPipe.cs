using System.Collections.Concurrent;

namespace Kiln.Nix.Nar;

/// <summary>
/// Hands filled buffers from the thread that produces a NAR to a second thread that writes them (to a hash, a
/// file, stdout), so reading the file system and hashing overlap on two cores. A fixed set of buffers circulates
/// between the two, bounding memory; a failure on the writing side stops the producer with that failure.
/// </summary>
internal sealed class BlockPipe : IDisposable
{
    private const int Buffers = 4;

    private readonly BlockingCollection<(byte[] Buffer, int Length)> _full = new(Buffers);
    private readonly BlockingCollection<byte[]> _free = new(Buffers);
    private readonly CancellationTokenSource _failed = new();
    private readonly Thread _writer;
    private Exception? _writerError;

    public BlockPipe(Stream output, int bufferSize)
    {
        for (var i = 0; i < Buffers - 1; i++)
        {
            _free.Add(new byte[bufferSize]);
        }

        _writer = new Thread(() => WriteLoop(output)) { IsBackground = true, Name = "nar-writer" };
        _writer.Start();
    }

    private void WriteLoop(Stream output)
    {
        try
        {
            // An empty write lets the output initialise itself (a hash loads OpenSSL) here, while the producer
            // is already walking the tree.
            output.Write(ReadOnlySpan<byte>.Empty);
            foreach (var (buffer, length) in _full.GetConsumingEnumerable())
            {
                output.Write(buffer, 0, length);
                _free.Add(buffer);
            }
        }
#pragma warning disable CA1031 // Any failure must reach the producer, which rethrows it.
        catch (Exception e)
#pragma warning restore CA1031
        {
            _writerError = e;
            _failed.Cancel();
        }
    }

    /// <summary>Queues a filled buffer for writing and returns an empty one.</summary>
    public byte[] Swap(byte[] filled, int length)
    {
        try
        {
            _full.Add((filled, length), _failed.Token);
            return _free.Take(_failed.Token);
        }
        catch (OperationCanceledException)
        {
            throw WriterFailure();
        }
    }

    /// <summary>Waits until everything queued has been written; rethrows a write failure.</summary>
    public void Complete()
    {
        _full.CompleteAdding();
        _writer.Join();
        if (_writerError is not null)
        {
            throw WriterFailure();
        }
    }

    private IOException WriterFailure() =>
        _writerError as IOException ?? new IOException($"writing the archive failed: {_writerError?.Message}", _writerError);

    public void Dispose()
    {
        if (!_full.IsAddingCompleted)
        {
            _full.CompleteAdding();
            _writer.Join();
        }

        _full.Dispose();
        _free.Dispose();
        _failed.Dispose();
    }
}
