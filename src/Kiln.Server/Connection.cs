using System.IO.Pipelines;
using System.Net.Sockets;

namespace Kiln.Server;

/// <summary>
/// A client connection as a session uses it: its input as a pipe that a receive loop of its own keeps filling (as
/// Kestrel's socket transport does), its output as a pipe writer, and <see cref="Closed"/>, which fires the moment the
/// peer goes away — even while the session is not reading, as during a build. Nix's daemon watches its socket for a
/// hang-up in the same way (<c>MonitorFdHup</c>) and stops the work of a client that left.
/// <para>End of input counts as leaving: a Nix client never half-closes a connection it still expects answers on, and
/// through SSH a client that dies reaches Kiln only as end of input (the bridge keeps its receiving side open until
/// the server closes).</para>
/// </summary>
internal sealed class Connection : IAsyncDisposable
{
    // Back-pressure: the receive loop stops reading when this much is waiting for the session, so an upload never
    // piles up in memory. The session's continuations run inline on the receive loop (no thread-pool hop per request,
    // as reading the socket directly would have it): while a request waits on something else (a build), the loop is
    // free again and sees the client leave.
    private static readonly PipeOptions InputOptions = new(pauseWriterThreshold: 1 << 20, resumeWriterThreshold: 512 << 10,
        readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline, minimumSegmentSize: 16 << 10, useSynchronizationContext: false);

    private readonly Socket _socket;
    private readonly Pipe _input = new(InputOptions);
    private readonly CancellationTokenSource _closed = new();
    private readonly Task _receiving;
    private readonly NetworkStream _stream;

    public Connection(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        Output = PipeWriter.Create(_stream, new StreamPipeWriterOptions(minimumBufferSize: 64 * 1024, leaveOpen: true));
        _receiving = Task.Run(ReceiveAsync);
    }

    public PipeReader Input => _input.Reader;

    public PipeWriter Output { get; }

    /// <summary>Fires when the peer has closed its side or the connection broke.</summary>
    public CancellationToken Closed => _closed.Token;

    public bool IsClosed => _closed.IsCancellationRequested;

    private async Task ReceiveAsync()
    {
        var writer = _input.Writer;
        Exception? error = null;
        try
        {
            while (true)
            {
                var memory = writer.GetMemory(16 << 10);
                var read = await _socket.ReceiveAsync(memory, SocketFlags.None).ConfigureAwait(false);
                if (read == 0)
                {
                    break;
                }

                writer.Advance(read);
                var flushed = await writer.FlushAsync().ConfigureAwait(false);
                if (flushed.IsCompleted)
                {
                    return; // the session has stopped reading: it is ending on its own
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            error = new IOException($"the connection broke ({(e as SocketException)?.SocketErrorCode.ToString() ?? "closed"})", e);
        }
        finally
        {
            await writer.CompleteAsync(error).ConfigureAwait(false);
            try
            {
                await _closed.CancelAsync().ConfigureAwait(false);
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            // Completing the output sends what is still buffered: into a connection the client already closed, that
            // fails, and the session (which ended with its own reason) must not be reported as failed for it.
            await Output.CompleteAsync().ConfigureAwait(false);
        }
        catch (IOException)
        {
        }
        catch (ObjectDisposedException)
        {
        }

        await _input.Reader.CompleteAsync().ConfigureAwait(false);

        // The receive loop may be waiting on the socket: shutting it down ends the wait.
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }

        await _receiving.ConfigureAwait(false);
        await _stream.DisposeAsync().ConfigureAwait(false);
        _closed.Dispose();
    }
}
