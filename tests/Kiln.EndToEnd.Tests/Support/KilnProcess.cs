using System.Diagnostics;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>A running <c>kiln serve</c> with its own data directory and socket, stopped with SIGTERM on dispose.</summary>
public sealed class KilnProcess : IDisposable
{
    internal static readonly string Dll = Path.Combine(AppContext.BaseDirectory, "kiln.dll");
    private readonly Process _process;
    private readonly ProcessOutput _output;
    private readonly TempDir _temp = new();
    private readonly List<string> _alsoRemove = [];

    /// <param name="ssh">Also run the SSH front door, on a free port of 127.0.0.1 (<see cref="SshPort"/>).</param>
    /// <param name="http">Also serve the HTTP binary cache, on a free port of 127.0.0.1 (<see cref="HttpUrl"/>).</param>
    /// <param name="dataDirectory">Where the data directory goes (default: a fresh one of the test's own).</param>
    /// <param name="arguments">More options for <c>kiln serve</c>.</param>
    /// <param name="environment">More environment variables for it.</param>
    public KilnProcess(bool ssh = false, bool http = false, string? dataDirectory = null, IEnumerable<string>? arguments = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        DataDirectory = dataDirectory ?? _temp["data"];
        SocketDirectory = _temp["sockets"];
        Directory.CreateDirectory(SocketDirectory);
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        SshPort = ssh ? FreePort() : 0;
        HttpPort = http ? FreePort() : 0;
        foreach (var arg in new[]
        {
            Dll, "serve", "--data", DataDirectory, "--socket", Path.Combine(SocketDirectory, "daemon.sock"),
            "--ssh-listen", ssh ? $"127.0.0.1:{SshPort}" : "none", "--http-listen", http ? $"127.0.0.1:{HttpPort}" : "none",
        }.Concat(arguments ?? []))
        {
            info.ArgumentList.Add(arg);
        }

        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[name] = value;
        }

        _process = Process.Start(info)!;
        _output = new ProcessOutput(_process);
        try
        {
            WaitUntilServing(ssh, http);
        }
        catch
        {
            // A server that did not come up goes now, with its directory: nothing outlives the test that started it.
            try
            {
                Dispose();
            }
            catch (InvalidOperationException)
            {
                // it had to be killed; the reason it did not start is the one to report
            }

            throw;
        }
    }

    private void WaitUntilServing(bool ssh, bool http)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!File.Exists(Path.Combine(SocketDirectory, "daemon.sock")))
        {
            if (_process.HasExited || DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException($"kiln serve did not start:\n{Log}");
            }

            Thread.Sleep(50);
        }

        foreach (var (wanted, port, what) in new[] { (ssh, SshPort, "sshd"), (http, HttpPort, "HTTP listener") })
        {
            while (wanted && !Listening(port))
            {
                if (_process.HasExited || DateTime.UtcNow > deadline)
                {
                    throw new InvalidOperationException($"kiln serve's {what} did not start:\n{Log}");
                }

                Thread.Sleep(50);
            }
        }
    }

    /// <summary>The port of the HTTP binary cache (0: none).</summary>
    public int HttpPort { get; }

    public string HttpUrl => $"http://127.0.0.1:{HttpPort}";

    /// <summary>Runs a <c>kiln</c> command on this server's data directory and fails the test unless it succeeds; returns its output.</summary>
    public string Cli(params string[] args)
    {
        var result = Processes.Run("dotnet", [Dll, .. args, "--data", DataDirectory]);
        Assert.True(result.ExitCode == 0, $"kiln {string.Join(' ', args)}: {result.Stderr}");
        return result.StdoutText;
    }

    /// <summary>The port Kiln's sshd listens on (0: no SSH).</summary>
    public int SshPort { get; }

    /// <summary>sshd's host key, as known_hosts wants it: <c>[127.0.0.1]:PORT ssh-ed25519 AAAA…</c>.</summary>
    public string KnownHostsLine => $"[127.0.0.1]:{SshPort} " + string.Join(' ', File.ReadAllText(Path.Combine(DataDirectory, "ssh", "ssh_host_ed25519_key.pub")).Split(' ').Take(2));

    internal static int FreePort() => TestPorts.Free();

    private static bool Listening(int port)
    {
        try
        {
            using var client = new System.Net.Sockets.TcpClient();
            client.Connect(System.Net.IPAddress.Loopback, port);
            return true;
        }
        catch (System.Net.Sockets.SocketException)
        {
            return false;
        }
    }

    public string DataDirectory { get; }

    /// <summary>The directory holding daemon.sock (bind-mounted into client chroots at /run/kiln).</summary>
    public string SocketDirectory { get; }

    public string SocketPath => Path.Combine(SocketDirectory, "daemon.sock");

    /// <summary>Kiln's unpacked store root for the socket account (clients use <c>?root=</c>).</summary>
    public string StoreRoot => Path.Combine(DataDirectory, "root");

    public int ProcessId => _process.Id;

    public string Log => _output.Text;

    /// <summary>Waits until the server's log says <paramref name="text"/> (its lines arrive asynchronously); false on timeout.</summary>
    public bool WaitForLog(string text, TimeSpan? timeout = null) => _output.WaitFor(text, timeout ?? TimeSpan.FromSeconds(10));

    /// <summary>Peak resident memory so far, from /proc (VmHWM), in KiB.</summary>
    public long PeakMemoryKib() =>
        File.ReadAllLines($"/proc/{_process.Id}/status").Where(l => l.StartsWith("VmHWM:", StringComparison.Ordinal))
            .Select(l => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture)).Single();

    /// <summary>Kills the server with SIGKILL, as a power cut would end it (its builds die with it), and waits for it to go.</summary>
    public void Kill()
    {
        if (!_process.HasExited)
        {
            Processes.Run("kill", ["-KILL", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        }

        _process.WaitForExit();

        // Its sshd child goes with it (the parent-death signal); were one left, the next kiln serve on this directory
        // would stop it, and so does this, for a test that starts none.
        global::Kiln.Server.Ssh.SshInstallation.StopOrphanedSshd(Path.Combine(DataDirectory, "ssh", "sshd.pid"), Path.Combine(DataDirectory, "ssh", "sshd_config"));

        // And the files it kept under /run for sshd, which a server stopped cleanly removes: on tmpfs, each test that
        // killed one used to leave two megabytes of memory behind until the machine restarted.
        TempDir.Remove(global::Kiln.Server.Ssh.SshInstallation.RuntimeDirectoryFor(DataDirectory));
    }

    /// <summary>Stops the server with SIGTERM and returns its exit code.</summary>
    public int Stop()
    {
        if (!_process.HasExited)
        {
            Processes.Run("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
            if (!_process.WaitForExit(TimeSpan.FromSeconds(30)))
            {
                _process.Kill(entireProcessTree: true);
                TempDir.Remove(global::Kiln.Server.Ssh.SshInstallation.RuntimeDirectoryFor(DataDirectory));
                throw new InvalidOperationException($"kiln serve did not stop on SIGTERM:\n{Log}");
            }
        }

        _process.WaitForExit();
        return _process.ExitCode;
    }

    /// <summary>Directories a test made for this server (its clients' keys) that go when it does.</summary>
    public void RemoveOnDispose(params string[] directories) => _alsoRemove.AddRange(directories);

    public void Dispose()
    {
        try
        {
            Stop();
        }
        finally
        {
            _process.Dispose();
            _temp.Dispose();
            foreach (var directory in _alsoRemove)
            {
                TempDir.Remove(directory);
            }
        }
    }
}
