using System.Net;
using System.Net.Sockets;
using System.Text;
using Kiln.Http.ZeroCopy;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Kiln.Http.Tests;

/// <summary>
/// File bodies by sendfile under a real Kestrel on a loopback socket, read by a raw HTTP/1.1 client so that what
/// crosses the wire (headers, exact body bytes, keep-alive) is what is checked. The tests of this class run one after
/// another: they read the process-wide count of bytes sent by sendfile.
/// </summary>
public sealed class ZeroCopyFilesTests : IAsyncLifetime
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kiln-zerocopy-").FullName;
    private readonly byte[] _small = RandomBytes(150_000, 1);
    private readonly byte[] _large = RandomBytes(48 << 20, 2); // larger than any socket buffer on the way
    private WebApplication _app = null!;
    private int _port;
    private readonly TaskCompletionSource _largeRequestEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly System.Collections.Concurrent.ConcurrentQueue<Exception> _handlerFailures = new();

    public async ValueTask InitializeAsync()
    {
        await File.WriteAllBytesAsync(Path.Combine(_directory, "small"), _small);
        await File.WriteAllBytesAsync(Path.Combine(_directory, "large"), _large);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(IPAddress.Loopback, 0, listen => ZeroCopyFiles.Listen(listen, TimeSpan.FromSeconds(1), minBytesPerSecond: 1L << 40)));
        _app = builder.Build();
        ZeroCopyFiles.Use(_app);
        _app.Run(async context =>
        {
            var name = context.Request.Path.Value![1..];
            var file = Path.Combine(_directory, name.Replace("chunked-", "", StringComparison.Ordinal));
            try
            {
                if (name.StartsWith("chunked-", StringComparison.Ordinal))
                {
                    await context.Response.SendFileAsync(file); // no Content-Length: Kestrel's own path
                    return;
                }

                await TypedResults.PhysicalFile(file, "application/octet-stream", enableRangeProcessing: true).ExecuteAsync(context);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                _handlerFailures.Enqueue(e); // a client's leaving is an OperationCanceledException (ConnectionAbortedException); anything else is a bug
                throw;
            }
            finally
            {
                if (name == "large")
                {
                    _largeRequestEnded.TrySetResult();
                }
            }
        });
        await _app.StartAsync();
        _port = new Uri(_app.Urls.First()).Port;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    // The server counts a sendfile step once it has ended, which may be just after the client has read its bytes (a
    // loaded CI saw the count a moment late): wait for it a little.
    private static async Task<bool> SentBySendfileAsync(long before, long bytes)
    {
        for (var waited = 0; waited < 100 && SocketOutput.FileBytesSent - before < bytes; waited++)
        {
            await Task.Delay(50);
        }

        return SocketOutput.FileBytesSent - before >= bytes;
    }

    [Fact]
    public async Task Whole_files_go_by_sendfile_byte_for_byte_on_one_kept_alive_connection()
    {
        using var client = await RawClient.ConnectAsync(_port);
        var before = SocketOutput.FileBytesSent;
        for (var i = 0; i < 3; i++)
        {
            var response = await client.GetAsync("/small");
            Assert.Equal(200, response.Status);
            Assert.Equal(_small, response.Body);
            Assert.Equal("150000", response.Headers["content-length"]);
        }

        var large = await client.GetAsync("/large");
        Assert.Equal(_large.Length, large.Body.Length);
        Assert.True(_large.AsSpan().SequenceEqual(large.Body));
        Assert.Equal(1, client.Connections);
        Assert.True(await SentBySendfileAsync(before, 3 * _small.Length + _large.Length), "the bodies did not go by sendfile");
    }

    [Fact]
    public async Task Ranges_head_and_bodies_of_unknown_length_are_right_too()
    {
        using var client = await RawClient.ConnectAsync(_port);
        var before = SocketOutput.FileBytesSent;
        var range = await client.GetAsync("/small", "Range: bytes=1000-1999\r\n");
        Assert.Equal(206, range.Status);
        Assert.Equal(_small[1000..2000], range.Body);
        Assert.True(await SentBySendfileAsync(before, 1000), "the range did not go by sendfile");

        var head = await client.GetAsync("/small", method: "HEAD");
        Assert.Equal(200, head.Status);
        Assert.Equal("150000", head.Headers["content-length"]);
        Assert.Empty(head.Body);

        var chunked = await client.GetAsync("/chunked-small");
        Assert.Equal("chunked", chunked.Headers["transfer-encoding"]);
        Assert.Equal(_small, chunked.Body);

        Assert.Equal(_small, (await client.GetAsync("/small")).Body);
        Assert.Equal(1, client.Connections);
    }

    [Fact]
    public async Task A_client_that_stops_reading_is_dropped_and_others_are_served()
    {
        // A tiny receive window and no reading: the file body stalls once the socket buffers are full.
        using var stalled = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 4096 };
        await stalled.ConnectAsync(IPAddress.Loopback, _port);
        await stalled.SendAsync(Encoding.ASCII.GetBytes("GET /large HTTP/1.1\r\nHost: x\r\n\r\n"));
        await _largeRequestEnded.Task.WaitAsync(TimeSpan.FromSeconds(30));

        // Its connection was ended: reading on gets less than the whole body, then the end.
        var received = 0L;
        var buffer = new byte[1 << 20];
        try
        {
            int n;
            while ((n = await stalled.ReceiveAsync(buffer).WaitAsync(TimeSpan.FromSeconds(30))) > 0)
            {
                received += n;
            }
        }
        catch (SocketException)
        {
            // reset: as good an end as any
        }

        Assert.True(received < _large.Length, $"received {received} bytes of {_large.Length}");

        using var client = await RawClient.ConnectAsync(_port);
        Assert.Equal(_small, (await client.GetAsync("/small")).Body);
    }

    [Fact]
    public async Task A_client_that_leaves_mid_body_does_not_disturb_the_server()
    {
        for (var i = 0; i < 3; i++)
        {
            using var leaving = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await leaving.ConnectAsync(IPAddress.Loopback, _port);
            await leaving.SendAsync(Encoding.ASCII.GetBytes("GET /large HTTP/1.1\r\nHost: x\r\n\r\n"));
            await leaving.ReceiveAsync(new byte[65536]);
            leaving.Close(0); // reset, mid-body
        }

        using var client = await RawClient.ConnectAsync(_port);
        var large = await client.GetAsync("/large");
        Assert.True(_large.AsSpan().SequenceEqual(large.Body));
    }

    [Fact]
    public async Task Clients_that_half_close_mid_body_end_their_requests_as_aborted_not_as_failures()
    {
        // Kestrel disposes the socket of a client that sends its FIN (or leaves) while the body is still going: the next
        // sendfile on it must end the request like a failed send, not with an ObjectDisposedException from the socket
        // handle (which the cache would log as a failure of its own). A race: many clients make it likely.
        var cancel = TestContext.Current.CancellationToken;
        for (var i = 0; i < 300; i++)
        {
            using var leaving = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await leaving.ConnectAsync(IPAddress.Loopback, _port, cancel);
            await leaving.SendAsync(Encoding.ASCII.GetBytes($"GET /{(i % 2 == 0 ? "large" : "small")} HTTP/1.1\r\nHost: x\r\n\r\n"), cancel);
            leaving.Shutdown(SocketShutdown.Send);
            var buffer = new byte[1 << 16];
            try
            {
                while (await leaving.ReceiveAsync(buffer, cancel) > 0)
                {
                }
            }
            catch (SocketException)
            {
                // reset: as good an end as any
            }
        }

        using var client = await RawClient.ConnectAsync(_port);
        Assert.Equal(_small, (await client.GetAsync("/small")).Body);
        Assert.True(_handlerFailures.IsEmpty, string.Join("\n", _handlerFailures.Select(e => e.GetType().Name + ": " + e.Message)));
    }

    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
