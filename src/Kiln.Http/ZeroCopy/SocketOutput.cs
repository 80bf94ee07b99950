using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.AspNetCore.Connections;

namespace Kiln.Http.ZeroCopy;

/// <summary>
/// The output of one plain HTTP/1.1 connection, written straight to its socket by whoever flushes it. Kestrel's own
/// transport hands every response byte to a send loop of its own; with that loop in between, nothing else may write
/// to the socket, because nobody can tell when the loop has sent what came before. Here Kestrel's output is sent
/// during its flush, so once a flush returns everything before it is on the wire and a file body can follow by
/// sendfile(2), from the page cache to the socket without passing through user space.
/// </summary>
/// <remarks>
/// Kestrel checks a response against its Content-Length by counting the body bytes written through it, so after a
/// file body has gone by sendfile the same number of bytes is "written" through Kestrel as placeholders:
/// <see cref="GetMemory"/> hands out a shared scratch buffer that nobody reads and <see cref="Advance"/> drops
/// them. Nothing else in the connection can write in between: a request's handler is the only writer while it runs.
/// </remarks>
internal sealed partial class SocketOutput : PipeWriter
{
    // A sendfile call moves at most this much (larger steps cost fewer wake-ups). Kestrel's response data rate does
    // not see bytes it did not send, so each step has its own deadline: the grace time, plus the step at the
    // slowest rate a client may read.
    private const int FileChunk = 4 << 20;

    // Handed out for placeholder bytes; never read, never sent.
    private static readonly byte[] Scratch = new byte[FileChunk];

    private readonly Socket _socket;
    private readonly ConnectionContext _connection;
    private readonly TimeSpan _stepTimeout;
    private readonly Pipe _pending = new(new PipeOptions(
        pauseWriterThreshold: 0, // never makes a flush wait: the flush itself sends
        readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline, useSynchronizationContext: false));

    private long _placeholders;
    private volatile bool _closed;
    private bool? _nonBlocking; // whether sendfile may be called on this socket directly (it never waits then)
    private CancellationTokenSource? _flushCancellation;

    public SocketOutput(Socket socket, ConnectionContext connection, TimeSpan grace, long minBytesPerSecond)
    {
        _socket = socket;
        _connection = connection;
        _stepTimeout = grace + TimeSpan.FromSeconds((double)FileChunk / minBytesPerSecond);
    }

    /// <summary>File bytes sent by sendfile over every connection since start (what the tests check).</summary>
    public static long FileBytesSent => Interlocked.Read(ref _fileBytesSent);

    private static long _fileBytesSent;

    public override Memory<byte> GetMemory(int sizeHint = 0) =>
        _placeholders > 0 ? Scratch.AsMemory(0, (int)Math.Min(_placeholders, Scratch.Length)) : _pending.Writer.GetMemory(sizeHint);

    public override Span<byte> GetSpan(int sizeHint = 0) => GetMemory(sizeHint).Span;

    public override void Advance(int bytes)
    {
        if (_placeholders == 0)
        {
            _pending.Writer.Advance(bytes);
            return;
        }

        if (bytes > _placeholders)
        {
            throw new InvalidOperationException("more bytes were written than a file body sent by sendfile accounted for");
        }

        _placeholders -= bytes;
    }

    public override void CancelPendingFlush() => _flushCancellation?.Cancel();

    // System.Text.Json asks how much a response holds unflushed, to flush large documents as it writes them.
    public override bool CanGetUnflushedBytes => true;

    public override long UnflushedBytes => _pending.Writer.UnflushedBytes;

    public override void Complete(Exception? exception = null) => _pending.Writer.Complete(exception);

    public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default) => SendPendingAsync(cancellationToken);

    /// <summary>
    /// Sends <paramref name="count"/> bytes of <paramref name="file"/> from <paramref name="offset"/> by sendfile, after
    /// everything flushed before it, then accounts for them through <paramref name="body"/> (the response's writer)
    /// without copying any. The file must be opened for asynchronous reads (.NET's sendfile path needs it).
    /// </summary>
    public async Task SendFileAsync(PipeWriter body, FileStream file, long offset, long count, CancellationToken cancellationToken)
    {
        await SendPendingAsync(cancellationToken).ConfigureAwait(false);
        await SendFileBytesAsync(file, offset, count, cancellationToken).ConfigureAwait(false);

        // Kestrel counts the body against Content-Length: the same number of bytes, as placeholders.
        _placeholders = count;
        try
        {
            for (var left = count; left > 0;)
            {
                var placeholder = body.GetMemory((int)Math.Min(left, FileChunk));
                var advanced = (int)Math.Min(placeholder.Length, left);
                body.Advance(advanced);
                left -= advanced;
            }

            // Kestrel hands out memory of its own once its output is done (the client left): then ours were not taken.
            ConnectionClosedIf(_placeholders != 0);
        }
        finally
        {
            _placeholders = 0;
        }

        await body.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    // Steps of at most FileChunk. Each goes first straight to sendfile(2) on this thread, for as much as the socket takes
    // at once (often all of it); only when the socket's buffer is full does the rest of the step wait for the socket in
    // .NET's engine. Waiting every step there (as before) cost a completion and hand-off per step and per file: 0.8× of
    // nginx's throughput on one connection, against 0.87× now.
    private async Task SendFileBytesAsync(FileStream file, long offset, long count, CancellationToken cancellationToken)
    {
        SocketAsyncEventArgs? send = null;
        try
        {
            for (long sent = 0; sent < count;)
            {
                ConnectionClosedIf(_closed);
                sent += SendFileNow(file, offset + sent, count - sent, cancellationToken);
                if (sent < count)
                {
                    send ??= NewSendFileStep();
                    sent += await SendFileStepAsync(send, file, offset + sent, (int)Math.Min(count - sent, FileChunk), cancellationToken).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            send?.Dispose();
        }
    }

    private static SocketAsyncEventArgs NewSendFileStep()
    {
        var send = new SocketAsyncEventArgs();
        send.Completed += static (_, e) => ((TaskCompletionSource<SocketError>)e.UserToken!).TrySetResult(e.SocketError);
        return send;
    }

    // One step through .NET's socket engine, which waits until the socket takes it; its length, or the connection ends.
    private async Task<int> SendFileStepAsync(SocketAsyncEventArgs send, FileStream file, long offset, int chunk, CancellationToken cancellationToken)
    {
        send.SendPacketsElements = [new SendPacketsElement(file, offset, chunk, endOfPacket: false)];
        // Continued on the thread that saw the step end: the next step starts there, without a hand-off.
        var done = new TaskCompletionSource<SocketError>();
        send.UserToken = done;
        SocketError result;
        try
        {
            result = _socket.SendPacketsAsync(send) ? await WaitAsync(done.Task, cancellationToken).ConfigureAwait(false) : send.SocketError;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            result = SocketError.Shutdown; // Kestrel closed the connection between two steps
        }

        // A short step (the file shrank under us) must end the connection too: the body would be cut short.
        if (result != SocketError.Success || send.BytesTransferred != chunk)
        {
            Close();
            ConnectionClosedIf(true);
        }

        Interlocked.Add(ref _fileBytesSent, chunk);
        return chunk;
    }

    /// <summary>
    /// Up to <paramref name="count"/> bytes of the file by sendfile(2) straight away, without waiting for the socket:
    /// what its buffer takes now (0 when it is full, or when the socket would block a thread). Nothing else writes to
    /// the socket meanwhile (see the remarks on the class).
    /// </summary>
    private long SendFileNow(FileStream file, long offset, long count, CancellationToken cancellationToken)
    {
        // .NET's sockets are non-blocking underneath once an asynchronous operation ran (Kestrel's first receive);
        // checked once per connection all the same, because a blocking one would hold this thread for a slow client.
        // (Linux's constants: elsewhere, .NET's engine does every step.)
        try
        {
            _nonBlocking ??= OperatingSystem.IsLinux() && Fcntl(_socket.SafeHandle, FGetFl, 0) is var flags and >= 0 && (flags & ONonBlock) != 0;
        }
        catch (ObjectDisposedException)
        {
            // Kestrel disposes the socket when the client goes (a FIN, a reset) or the server stops: as a failed send.
            Close();
            ConnectionClosedIf(true);
        }

        if (_nonBlocking is false)
        {
            return 0;
        }

        var start = offset;
        while (offset - start < count)
        {
            // A fast reader keeps one call going as long as there is file: steps of FileChunk see an abort between them.
            if (cancellationToken.IsCancellationRequested)
            {
                Close();
                throw new ConnectionAbortedException("the request was aborted");
            }

            var step = Math.Min(count - (offset - start), FileChunk);
            nint moved;
            try
            {
                moved = SendFile(_socket.SafeHandle, file.SafeFileHandle, ref offset, (nuint)step);
            }
            catch (ObjectDisposedException)
            {
                Close();
                throw new ConnectionAbortedException("the client closed the connection");
            }

            if (moved > 0)
            {
                Interlocked.Add(ref _fileBytesSent, moved); // counted as sent, like every step of SendFileStepAsync
            }

            if (moved == step)
            {
                continue; // sendfile moved the offset
            }

            if (moved > 0)
            {
                break; // the socket's buffer is full now: the rest of the step waits for it
            }

            var errno = moved < 0 ? Marshal.GetLastPInvokeError() : 0;
            if (errno == EIntr)
            {
                continue;
            }

            if (errno != EAgain)
            {
                // 0: the file ended early (it shrank under us); otherwise the connection failed. The body would be
                // cut short either way: the connection ends.
                Close();
                ConnectionClosedIf(true);
            }

            break;
        }

        return offset - start;
    }

    private const int FGetFl = 3, ONonBlock = 0x800, EAgain = 11, EIntr = 4;

    [LibraryImport("libc", EntryPoint = "sendfile", SetLastError = true)]
    private static partial nint SendFile(SafeSocketHandle socket, Microsoft.Win32.SafeHandles.SafeFileHandle file, ref long offset, nuint count);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(SafeSocketHandle socket, int command, int argument);

    // A step that does not finish in time, or whose request is aborted, ends the connection: that is also the only way
    // to get a pending socket operation back.
    private async Task<SocketError> WaitAsync(Task<SocketError> sending, CancellationToken cancellationToken)
    {
        try
        {
            return await sending.WaitAsync(_stepTimeout, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            Close();
            await sending.ConfigureAwait(false);
            throw new ConnectionAbortedException(e is TimeoutException ? "the client reads a file body too slowly" : "the request was aborted");
        }
    }

    private async ValueTask<FlushResult> SendPendingAsync(CancellationToken cancellationToken)
    {
        await _pending.Writer.FlushAsync(CancellationToken.None).ConfigureAwait(false); // commits; never waits (no back-pressure)
        if (!_pending.Reader.TryRead(out var read))
        {
            return new FlushResult(isCanceled: false, isCompleted: _closed);
        }

        var canceled = false;
        var flush = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        try
        {
            if (!_closed && !read.Buffer.IsEmpty)
            {
                _flushCancellation = flush;
                await SendAsync(read.Buffer, flush.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            // Part of the response may have gone: the connection cannot carry another one.
            canceled = true;
            Close();
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Close();
        }
        finally
        {
            _flushCancellation = null; // before disposing: CancelPendingFlush may come from another thread
            flush.Dispose();
            _pending.Reader.AdvanceTo(read.Buffer.End);
        }

        return new FlushResult(canceled, _closed);
    }

    private async ValueTask SendAsync(ReadOnlySequence<byte> buffer, CancellationToken cancellationToken)
    {
        if (buffer.IsSingleSegment)
        {
            for (var rest = buffer.First; !rest.IsEmpty;)
            {
                rest = rest[await _socket.SendAsync(rest, SocketFlags.None, cancellationToken).ConfigureAwait(false)..];
            }

            return;
        }

        // Several segments (a longer body): one gathering send for all of them. It has no cancellation of its own:
        // it is awaited to the end (a cancelled flush ends the connection, which ends the send).
        var segments = new List<ArraySegment<byte>>();
        foreach (var memory in buffer)
        {
            segments.Add(MemoryMarshal.TryGetArray(memory, out var segment) ? segment : memory.ToArray());
        }

        var left = buffer.Length;
        while (left > 0)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var sent = await _socket.SendAsync(segments, SocketFlags.None).ConfigureAwait(false);
            left -= sent;
            while (sent > 0 && segments.Count > 0)
            {
                var first = segments[0];
                if (sent >= first.Count)
                {
                    sent -= first.Count;
                    segments.RemoveAt(0);
                }
                else
                {
                    segments[0] = first[sent..];
                    sent = 0;
                }
            }
        }
    }

    private void Close()
    {
        _closed = true;
        _connection.Abort(new ConnectionAbortedException("the connection's output failed"));
    }

    private static void ConnectionClosedIf(bool closed)
    {
        if (closed)
        {
            throw new ConnectionAbortedException("the client closed the connection");
        }
    }
}
