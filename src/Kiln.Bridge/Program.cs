using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Kiln.Bridge;

/// <summary>
/// <c>kiln-bridge --socket PATH KEY-ID</c>: the forced command of every Kiln SSH key. It tells the server who is
/// calling (the key sshd authenticated, <c>SSH_ORIGINAL_COMMAND</c>, and the <c>KILN_*</c> variables the client sent
/// with SetEnv) in one JSON line, reads the server's one-line answer, then copies bytes both ways until the server
/// closes. The server believes the header only because it comes from this program's user (it checks the peer's
/// uid), which only sshd runs.
/// <para>Answers: <c>ok</c> (raw stdin/stdout: the worker protocol); <c>ok stderr=TOKEN</c> (the same, plus a second
/// connection for stderr: the serve protocol's logs); <c>ok framed</c> (the server's side carries stdout, stderr and
/// the exit status in frames: the admin shell); <c>error: MESSAGE</c> (printed; exit 1).</para>
/// <para>Everything is synchronous, one thread per direction: this runs for every SSH session, so it does as little
/// as it can before the first byte, and a protocol round trip crosses it twice.</para>
/// </summary>
internal static class Program
{
    private const int MaxAnswer = 4096;

    /// <summary>Exit status of <c>--auth-keys</c> when the server cannot be asked and no fallback was named.</summary>
    private const int ServerUnreachable = 75;

    private static int Main(string[] args)
    {
        using var stderr = Console.OpenStandardError();
        if (args.Length > 0 && args[0] == "--auth-keys")
        {
            return AuthKeys(args, stderr);
        }

        if (args.Length != 3 || args[0] != "--socket" || !long.TryParse(args[2], out var keyId))
        {
            stderr.Write("kiln-bridge: usage: kiln-bridge --socket PATH KEY-ID (sshd runs it for Kiln's keys)\n"u8);
            return 2;
        }

        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(args[1]));
        }
        catch (SocketException e)
        {
            stderr.Write(Encoding.UTF8.GetBytes($"kiln: the Kiln server is not reachable ({e.SocketErrorCode}); try again later\n"));
            return 1;
        }

        socket.Send(Header(keyId));
        var answer = ReadLine(socket);
        Thread? errors = null;
        if (answer?.StartsWith("ok stderr=", StringComparison.Ordinal) == true)
        {
            var token = answer["ok stderr=".Length..];
            errors = new Thread(() => CopyStderr(args[1], token, stderr)) { IsBackground = true };
            errors.Start();
            answer = "ok";
        }

        var framed = answer == "ok framed";
        if (answer != "ok" && !framed)
        {
            var message = answer is null ? "the Kiln server closed the connection" : answer.StartsWith("error: ", StringComparison.Ordinal) ? answer[7..] : answer;
            stderr.Write(Encoding.UTF8.GetBytes($"kiln: {message}\n"));
            return 1;
        }

        using var stdin = Console.OpenStandardInput();
        using var stdout = Console.OpenStandardOutput();
        var upload = new Thread(() => Pump(stdin.Read, data => socket.Send(data), () => socket.Shutdown(SocketShutdown.Send))) { IsBackground = true };
        upload.Start();
        if (framed)
        {
            return Demultiplex(socket, stdout, stderr);
        }

        // The session is over when the server closes; the client closing its side only ends the upload.
        Pump(buffer => socket.Receive(buffer), data =>
        {
            stdout.Write(data);
            stdout.Flush();
            return data.Length;
        }, () => { });
        errors?.Join(TimeSpan.FromSeconds(2));
        return 0;
    }

    // sshd's AuthorizedKeysCommand: --auth-keys --socket PATH --bridge COMMAND [--fallback PROGRAM] USER TYPE KEY. sshd
    // runs it (as root) for every key a client offers, often twice per login, so it asks the running server over the
    // bridge socket, which answers "key ID" or "none" from its database, instead of starting .NET and opening the
    // database itself. When the server cannot be asked, it becomes PROGRAM USER TYPE KEY (kiln serve's script running
    // `kiln auth-keys`, which reads the database); without one it exits 75. sshd runs it directly, not through that
    // script: a shell's start and fork for each of a login's two runs.
    private static int AuthKeys(string[] args, Stream stderr)
    {
        var fallback = args.Length == 10 && args[5] == "--fallback" ? args[6] : null;
        if ((args.Length != 8 && fallback is null) || args[1] != "--socket" || args[3] != "--bridge")
        {
            stderr.Write("kiln-bridge: usage: kiln-bridge --auth-keys --socket PATH --bridge COMMAND [--fallback PROGRAM] USER TYPE KEY\n"u8);
            return 2;
        }

        var (user, type, blob) = (args[^3], args[^2], args[^1]);
        if (!IsKeyText(type) || !IsKeyText(blob))
        {
            return 0; // not a key Kiln could have: nothing to authorise
        }

        string? answer;
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            socket.ReceiveTimeout = 10_000;
            socket.Connect(new UnixDomainSocketEndPoint(args[2]));
            try
            {
                socket.Send(Encoding.UTF8.GetBytes($"{{\"auth\":{{\"type\":\"{type}\",\"key\":\"{blob}\"}}}}\n"));
            }
            catch (SocketException)
            {
                // The server may answer (a refusal) and close before reading the question; the answer still waits.
            }

            answer = ReadLine(socket);
        }
        catch (SocketException)
        {
            return Unreachable(fallback, user, type, blob, stderr);
        }

        if (answer is null)
        {
            return Unreachable(fallback, user, type, blob, stderr);
        }

        if (answer.StartsWith("key ", StringComparison.Ordinal) && long.TryParse(answer.AsSpan(4), out var id))
        {
            // restrict: no forwarding, no pty unless asked (ssh -t re-enables it with pty), no user rc. exec: the login
            // shell sshd runs the command with becomes the bridge instead of waiting for it (no fork, no shell per session).
            using var stdout = Console.OpenStandardOutput();
            stdout.Write(Encoding.UTF8.GetBytes($"command=\"exec {args[4]} {id}\",restrict,pty {type} {blob}\n"));
        }

        return 0;
    }

    // The server could not be asked: the fallback takes this process's place, with sshd's stdout (the answer) and status.
    private static int Unreachable(string? fallback, string user, string type, string blob, Stream stderr)
    {
        if (fallback is null)
        {
            return ServerUnreachable;
        }

        var failure = Exec.Replace([fallback, user, type, blob]);
        stderr.Write(Encoding.UTF8.GetBytes($"kiln-bridge: cannot run {fallback}: {failure}\n"));
        return ServerUnreachable;
    }

    // What sshd passes as %t and %k: a key type and base64; anything else cannot be one of Kiln's keys, and must not
    // reach the JSON line or the authorized_keys line unquoted.
    private static bool IsKeyText(string text) =>
        text.Length is > 0 and <= 16 * 1024 && text.All(c => char.IsAsciiLetterOrDigit(c) || c is '+' or '/' or '=' or '-' or '.' or '@');

    private delegate int Source(Span<byte> buffer);

    private delegate int Sink(ReadOnlySpan<byte> data);

    // Copies until end of input or an error on either side, then runs done.
    private static void Pump(Source from, Sink to, Action done)
    {
        // Not zeroed: the runtime's fresh pages stay untouched, so not resident, until data fills them. An idle session
        // (a hundred of them wait on a busy CI server) then keeps about half the memory it would. Only what a read
        // wrote is ever sent on.
        var buffer = GC.AllocateUninitializedArray<byte>(64 * 1024);
        try
        {
            int read;
            while ((read = from(buffer)) > 0)
            {
                var sent = 0;
                while (sent < read)
                {
                    sent += to(buffer.AsSpan(sent, read - sent));
                }
            }

            done();
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            // One side went away: the other direction (or the server closing) ends the bridge.
        }
    }

    // The admin shell's answer: frames of a channel byte ('o' stdout, 'e' stderr, 'x' exit status), a big-endian
    // length and the bytes, so its errors reach stderr and its exit status the ssh client.
    private static int Demultiplex(Socket socket, Stream stdout, Stream stderr)
    {
        var header = new byte[5];
        while (ReceiveExactly(socket, header))
        {
            var length = BinaryPrimitives.ReadInt32BigEndian(header.AsSpan(1));
            if (length is < 0 or > 1 << 24)
            {
                return 1;
            }

            var data = new byte[length];
            if (!ReceiveExactly(socket, data))
            {
                return 1;
            }

            switch ((char)header[0])
            {
                case 'o':
                    stdout.Write(data);
                    stdout.Flush();
                    break;
                case 'e':
                    stderr.Write(data);
                    break;
                case 'x':
                    return length == 4 ? BinaryPrimitives.ReadInt32BigEndian(data) : 1;
            }
        }

        return 0;
    }

    private static bool ReceiveExactly(Socket socket, byte[] buffer)
    {
        var filled = 0;
        while (filled < buffer.Length)
        {
            var read = socket.Receive(buffer.AsSpan(filled));
            if (read == 0)
            {
                return false;
            }

            filled += read;
        }

        return true;
    }

    // The serve protocol's logs: a second connection naming the session's token, copied to stderr.
    private static void CopyStderr(string socketPath, string token, Stream stderr)
    {
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            socket.Connect(new UnixDomainSocketEndPoint(socketPath));
            socket.Send(Encoding.UTF8.GetBytes($"{{\"stderr\":\"{token}\"}}\n"));
            Pump(buffer => socket.Receive(buffer), data =>
            {
                stderr.Write(data);
                return data.Length;
            }, () => { });
        }
        catch (SocketException)
        {
            // Logs are a courtesy: the session itself decides the outcome.
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
    private static string? ReadLine(Socket socket)
    {
        var line = new List<byte>();
        var one = new byte[1];
        while (line.Count < MaxAnswer)
        {
            if (socket.Receive(one) == 0)
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
