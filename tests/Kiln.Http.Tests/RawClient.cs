using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Kiln.Http.Tests;

/// <summary>
/// A minimal HTTP/1.1 client over one socket: it writes requests as bytes and parses responses exactly (Content-Length
/// or chunked bodies), so a stray or missing byte shows up, and it counts the connections it had to open.
/// </summary>
internal sealed class RawClient : IDisposable
{
    private readonly int _port;
    private Socket? _socket;
    private readonly List<byte> _buffer = [];

    private RawClient(int port) => _port = port;

    public int Connections { get; private set; }

    public static Task<RawClient> ConnectAsync(int port) => Task.FromResult(new RawClient(port));

    public sealed record Response(int Status, Dictionary<string, string> Headers, byte[] Body);

    public async Task<Response> GetAsync(string path, string extraHeaders = "", string method = "GET")
    {
        if (_socket is null)
        {
            _socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await _socket.ConnectAsync(IPAddress.Loopback, _port);
            _buffer.Clear();
            Connections++;
        }

        await _socket.SendAsync(Encoding.ASCII.GetBytes($"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extraHeaders}\r\n"));
        var head = Encoding.ASCII.GetString(await ReadUntilAsync("\r\n\r\n"u8.ToArray())).Split("\r\n");
        var status = int.Parse(head[0].Split(' ')[1]);
        var headers = head.Skip(1).Where(l => l.Length > 0).Select(l => l.Split(':', 2))
            .ToDictionary(p => p[0].Trim().ToLowerInvariant(), p => p[1].Trim());
        byte[] body;
        if (method == "HEAD")
        {
            body = [];
        }
        else if (headers.TryGetValue("transfer-encoding", out var coding) && coding == "chunked")
        {
            var parts = new List<byte>();
            while (true)
            {
                var size = Convert.ToInt32(Encoding.ASCII.GetString(await ReadUntilAsync("\r\n"u8.ToArray())).Split(';')[0], 16);
                parts.AddRange(await ReadExactlyAsync(size));
                await ReadExactlyAsync(2);
                if (size == 0)
                {
                    break;
                }
            }

            body = [.. parts];
        }
        else
        {
            body = await ReadExactlyAsync(int.Parse(headers["content-length"]));
        }

        if (headers.TryGetValue("connection", out var connection) && connection == "close")
        {
            _socket.Dispose();
            _socket = null;
        }

        return new Response(status, headers, body);
    }

    private async Task<byte[]> ReadUntilAsync(byte[] delimiter)
    {
        while (true)
        {
            var at = IndexOf(delimiter);
            if (at >= 0)
            {
                var result = _buffer.GetRange(0, at).ToArray();
                _buffer.RemoveRange(0, at + delimiter.Length);
                return result;
            }

            await FillAsync();
        }
    }

    private async Task<byte[]> ReadExactlyAsync(int count)
    {
        while (_buffer.Count < count)
        {
            await FillAsync();
        }

        var result = _buffer.GetRange(0, count).ToArray();
        _buffer.RemoveRange(0, count);
        return result;
    }

    private async Task FillAsync()
    {
        var chunk = new byte[1 << 20];
        var n = await _socket!.ReceiveAsync(chunk).WaitAsync(TimeSpan.FromSeconds(30));
        if (n == 0)
        {
            throw new EndOfStreamException("the server closed the connection");
        }

        _buffer.AddRange(chunk.AsSpan(0, n));
    }

    private int IndexOf(byte[] delimiter)
    {
        for (var i = 0; i + delimiter.Length <= _buffer.Count; i++)
        {
            var match = true;
            for (var j = 0; j < delimiter.Length && match; j++)
            {
                match = _buffer[i + j] == delimiter[j];
            }

            if (match)
            {
                return i;
            }
        }

        return -1;
    }

    public void Dispose() => _socket?.Dispose();
}
