using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Kiln.Bridge;

/// <summary>
/// <c>kiln-bridge --socket PATH KEY-ID</c>: the forced command of every Kiln SSH key. It tells the server who is
/// calling (the key sshd authenticated, <c>SSH_ORIGINAL_COMMAND</c>, and the <c>KILN_*</c> variables the client sent
/// with SetEnv) in one JSON line, reads the server's one-line answer (<c>ok</c>, or <c>error: …</c>, which it prints
/// and exits 1), then copies bytes both ways until the server closes. The server believes the header only because
/// it comes from this program's user (it checks the peer's uid), which only sshd runs.
/// </summary>
internal static class Program
{
    private const int MaxAnswer = 4096;

    private static async Task<int> Main(string[] args)
    {
        if (args.Length != 3 || args[0] != "--socket" || !long.TryParse(args[2], out var keyId))
        {
            await Console.Error.WriteAsync("kiln-bridge: usage: kiln-bridge --socket PATH KEY-ID (sshd runs it for Kiln's keys)\n").ConfigureAwait(false);
            return 2;
        }

        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(args[1])).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            await Console.Error.WriteAsync($"kiln: the Kiln server is not reachable ({e.SocketErrorCode}); try again later\n").ConfigureAwait(false);
            return 1;
        }

        await using var server = new NetworkStream(socket, ownsSocket: false);
        await server.WriteAsync(Header(keyId)).ConfigureAwait(false);

        var answer = await ReadLineAsync(server).ConfigureAwait(false);
        Task errors = Task.CompletedTask;
        if (answer?.StartsWith("ok stderr=", StringComparison.Ordinal) == true)
        {
            // The serve protocol's stdout carries only the protocol; its logs come on a second connection.
            errors = CopyStderrAsync(args[1], answer["ok stderr=".Length..]);
            answer = "ok";
        }

        var framed = answer == "ok framed";
        if (answer != "ok" && !framed)
        {
            var message = answer is null ? "the Kiln server closed the connection" : answer.StartsWith("error: ", StringComparison.Ordinal) ? answer[7..] : answer;
            await Console.Error.WriteAsync($"kiln: {message}\n").ConfigureAwait(false);
            return 1;
        }

        using var stdin = Console.OpenStandardInput();
        using var stdout = Console.OpenStandardOutput();
        if (framed)
        {
            _ = UploadAsync(stdin, server, socket);
            return await DemultiplexAsync(server, stdout).ConfigureAwait(false);
        }

        var download = server.CopyToAsync(stdout);
        _ = UploadAsync(stdin, server, socket);

        // The session is over when the server closes; the client closing its side only ends the upload.
        await download.ConfigureAwait(false);
        await Task.WhenAny(errors, Task.Delay(TimeSpan.FromSeconds(2))).ConfigureAwait(false);
        return 0;
    }

    private static async Task CopyStderrAsync(string socketPath, string token)
    {
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath)).ConfigureAwait(false);
            await using var stream = new NetworkStream(socket, ownsSocket: false);
            await stream.WriteAsync(Encoding.UTF8.GetBytes($"{{\"stderr\":\"{token}\"}}\n")).ConfigureAwait(false);
            using var stderr = Console.OpenStandardError();
            await stream.CopyToAsync(stderr).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException)
        {
            // Logs are a courtesy: the session itself decides the outcome.
        }
    }

    // The admin shell's answer: frames of a channel byte ('o' stdout, 'e' stderr, 'x' exit status), a big-endian
    // length and the bytes, so its errors reach stderr and its exit status the ssh client.
    private static async Task<int> DemultiplexAsync(Stream server, Stream stdout)
    {
        using var stderr = Console.OpenStandardError();
        var header = new byte[5];
        while (true)
        {
            try
            {
                await server.ReadExactlyAsync(header).ConfigureAwait(false);
            }
            catch (EndOfStreamException)
            {
                return 0;
            }

            var length = System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1));
            if (length is < 0 or > 1 << 24)
            {
                return 1;
            }

            var data = new byte[length];
            await server.ReadExactlyAsync(data).ConfigureAwait(false);
            switch ((char)header[0])
            {
                case 'o':
                    await stdout.WriteAsync(data).ConfigureAwait(false);
                    await stdout.FlushAsync().ConfigureAwait(false);
                    break;
                case 'e':
                    await stderr.WriteAsync(data).ConfigureAwait(false);
                    break;
                case 'x':
                    return length == 4 ? System.Buffers.Binary.BinaryPrimitives.ReadInt32BigEndian(data) : 1;
            }
        }
    }

    private static async Task UploadAsync(Stream stdin, NetworkStream server, Socket socket)
    {
        try
        {
            await stdin.CopyToAsync(server).ConfigureAwait(false);
            socket.Shutdown(SocketShutdown.Send);
        }
        catch (IOException)
        {
            // The server went away; the download side ends the bridge.
        }
        catch (SocketException)
        {
        }
    }

    private static byte[] Header(long keyId)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteNumber("key", keyId);
            json.WriteString("command", Environment.GetEnvironmentVariable("SSH_ORIGINAL_COMMAND") ?? "");
            json.WriteStartObject("env");
            foreach (var entry in Environment.GetEnvironmentVariables().Cast<System.Collections.DictionaryEntry>().OrderBy(e => (string)e.Key, StringComparer.Ordinal))
            {
                if (entry.Key is string name && name.StartsWith("KILN_", StringComparison.Ordinal))
                {
                    json.WriteString(name, entry.Value as string ?? "");
                }
            }

            json.WriteEndObject();
            json.WriteString("client", Environment.GetEnvironmentVariable("SSH_CLIENT") ?? "");
            json.WriteEndObject();
        }

        buffer.WriteByte((byte)'\n');
        return buffer.ToArray();
    }

    // One line, byte by byte: nothing after it may be consumed, it belongs to the session.
    private static async Task<string?> ReadLineAsync(Stream stream)
    {
        var line = new List<byte>();
        var one = new byte[1];
        while (line.Count < MaxAnswer)
        {
            if (await stream.ReadAsync(one).ConfigureAwait(false) == 0)
            {
                return null;
            }

            if (one[0] == (byte)'\n')
            {
                return Encoding.UTF8.GetString(line.ToArray());
            }

            line.Add(one[0]);
        }

        return null;
    }
}
