using System.IO.Pipelines;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace Kiln.Http.ZeroCopy;

/// <summary>
/// File bodies by sendfile(2) under Kestrel, which has none of its own: <see cref="Listen"/> puts a
/// <see cref="SocketOutput"/> under each plain HTTP/1.1 connection, and <see cref="Use"/> makes
/// <c>Response.SendFileAsync</c> (what ASP.NET Core's file results call, ranges included) send through it when the
/// response's length is known. Everything else (HEAD, chunked bodies, TLS) takes Kestrel's own path.
/// </summary>
public static class ZeroCopyFiles
{
    /// <summary>
    /// Configures a listener: HTTP/1.1 only (its bytes go straight to the socket), output by <see cref="SocketOutput"/>.
    /// A client that reads a file body slower than <paramref name="minBytesPerSecond"/> (16 KiB/s), after
    /// <paramref name="grace"/> (60 s) for each sendfile step, is dropped.
    /// </summary>
    public static ListenOptions Listen(ListenOptions listen, TimeSpan? grace = null, long minBytesPerSecond = 16 * 1024)
    {
        ArgumentNullException.ThrowIfNull(listen);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(minBytesPerSecond);
        var timeout = grace ?? TimeSpan.FromSeconds(60);
        listen.Protocols = HttpProtocols.Http1;
        listen.Use(next => async connection =>
        {
            // Under TLS (a listener with UseHttps before this) the socket carries ciphertext: Kestrel's path then.
            if (connection.Features.Get<IConnectionSocketFeature>()?.Socket is not { } socket || connection.Features.Get<ITlsConnectionFeature>() is not null)
            {
                await next(connection).ConfigureAwait(false);
                return;
            }

            var transport = connection.Transport;
            var output = new SocketOutput(socket, connection, timeout, minBytesPerSecond);
            connection.Transport = new DuplexPipe(transport.Input, output);
            connection.Features.Set(output);
            try
            {
                await next(connection).ConfigureAwait(false);
                await output.FlushAsync().ConfigureAwait(false); // anything Kestrel wrote last and did not flush
            }
            finally
            {
                connection.Transport = transport;
            }
        });
        return listen;
    }

    /// <summary>Adds the request side: <c>Response.SendFileAsync</c> through the connection's <see cref="SocketOutput"/>.</summary>
    public static IApplicationBuilder Use(IApplicationBuilder app)
    {
        ArgumentNullException.ThrowIfNull(app);
        return app.Use((context, next) =>
        {
            // Under TLS the socket carries ciphertext: a file cannot go to it as it is.
            if (context.Features.Get<SocketOutput>() is { } output && context.Features.Get<ITlsConnectionFeature>() is null
                && context.Features.Get<IHttpResponseBodyFeature>() is { } body)
            {
                context.Features.Set<IHttpResponseBodyFeature>(new SendfileResponseBody(body, output, context));
            }

            return next(context);
        });
    }

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input => input;

        public PipeWriter Output => output;
    }

    // Kestrel's response body, except that a file body whose length the response declares goes by sendfile.
    private sealed class SendfileResponseBody(IHttpResponseBodyFeature kestrel, SocketOutput output, HttpContext context) : IHttpResponseBodyFeature
    {
        public Stream Stream => kestrel.Stream;

        public PipeWriter Writer => kestrel.Writer;

        public void DisableBuffering() => kestrel.DisableBuffering();

        public Task StartAsync(CancellationToken cancellationToken = default) => kestrel.StartAsync(cancellationToken);

        public Task CompleteAsync() => kestrel.CompleteAsync();

        public async Task SendFileAsync(string path, long offset, long? count, CancellationToken cancellationToken)
        {
            // The file is opened before anything is sent, so that a missing one is still an error response.
            var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 1, FileOptions.Asynchronous | FileOptions.SequentialScan);
            await using (file.ConfigureAwait(false))
            {
                await SendOpenFileAsync(file, offset, count, cancellationToken).ConfigureAwait(false);
            }
        }

        /// <summary>The same for a file already open (a blob store hands out open files, never paths).</summary>
        public async Task SendOpenFileAsync(FileStream file, long offset, long? count, CancellationToken cancellationToken)
        {
            var response = context.Response;
            var length = count ?? file.Length - offset;
            // Checked once the response has started, so that an OnStarting callback's changes count too.
            var wroteBefore = response.HasStarted;
            await kestrel.StartAsync(cancellationToken).ConfigureAwait(false);
            if (HttpMethods.IsHead(context.Request.Method) || response.StatusCode is StatusCodes.Status204NoContent or StatusCodes.Status304NotModified)
            {
                return; // no body
            }

            if (wroteBefore || response.ContentLength != length || offset < 0 || offset + length > file.Length)
            {
                // Kestrel checks what such a response may carry.
                await CopyAsync(file, offset, length, kestrel.Stream, cancellationToken).ConfigureAwait(false);
                return;
            }

            var headers = await kestrel.Writer.FlushAsync(cancellationToken).ConfigureAwait(false);
            if (headers.IsCompleted || headers.IsCanceled)
            {
                throw new ConnectionAbortedException("the client closed the connection");
            }

            await output.SendFileAsync(kestrel.Writer, file, offset, length, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Sends <paramref name="count"/> bytes of an open file from <paramref name="offset"/> as the response body: by
    /// sendfile where the connection allows it (see <see cref="Use"/>), by copying otherwise. The response's headers
    /// (status, Content-Length) must be set.
    /// </summary>
    public static Task SendFileAsync(HttpContext context, FileStream file, long offset, long count, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(context);
        return context.Features.Get<IHttpResponseBodyFeature>() is SendfileResponseBody zeroCopy
            ? zeroCopy.SendOpenFileAsync(file, offset, count, cancellationToken)
            : CopyAsync(file, offset, count, context.Response.Body, cancellationToken);
    }

    private static async Task CopyAsync(Stream file, long offset, long count, Stream body, CancellationToken cancellationToken)
    {
        file.Seek(offset, SeekOrigin.Begin);
        var buffer = new byte[Math.Min(count, 256 * 1024)];
        for (var left = count; left > 0;)
        {
            var read = await file.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, left)), cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                throw new IOException("the file is shorter than the response says");
            }

            await body.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
            left -= read;
        }
    }
}
