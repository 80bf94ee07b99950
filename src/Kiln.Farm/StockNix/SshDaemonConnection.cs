using System.Diagnostics;
using System.Globalization;
using System.IO.Pipelines;
using Kiln.Agent;
using Kiln.Protocol;
using Kiln.Protocol.Worker;

namespace Kiln.Farm.StockNix;

/// <summary>
/// One connection to a stock builder's Nix daemon: OpenSSH's <c>ssh</c> running <c>nix-daemon --stdio</c> there (as
/// Nix's own <c>ssh-ng://</c> store does), with the worker protocol spoken over its standard input and output. Only
/// the key and known-hosts file given are used (no agent, no user configuration); the host key must match.
/// </summary>
public sealed class SshDaemonConnection : IAsyncDisposable
{
    private readonly Process _ssh;
    private readonly Task _stderr;
    private readonly Queue<string> _messages = new();

    private SshDaemonConnection(Process ssh)
    {
        _ssh = ssh;
        _stderr = Task.Run(ReadStderrAsync);
    }

    /// <summary>What tenants are told when the builder cannot be reached (the details go to the server's log only).</summary>
    public const string Unreachable = "the builder could not be reached";

    private static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(30);

    public WorkerClient Client { get; private set; } = null!;

    // An ssh -o value: quoted (a path may hold spaces), with ssh's own expansions (%) escaped.
    private static string Quoted(string path) => $"\"{path.Replace("%", "%%", StringComparison.Ordinal)}\"";

    /// <summary>
    /// Logs in and shakes hands; a builder that cannot be reached is an <see cref="ExecutorUnavailableException"/>. A
    /// builder's daemon must trust its user (<paramref name="requireTrusted"/>); a push target's need not (it checks
    /// signatures instead).
    /// </summary>
    public static async Task<SshDaemonConnection> OpenAsync(BuilderAddress address, string keyFile, string knownHostsFile, bool hostKeyKnown, CancellationToken cancellationToken,
        bool requireTrusted = true)
    {
        var info = new ProcessStartInfo("ssh")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in new[]
        {
            "-F", "/dev/null", "-x", "-a", "-T",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", $"IdentityFile={Quoted(keyFile)}",
            "-o", $"UserKnownHostsFile={Quoted(knownHostsFile)}", "-o", "GlobalKnownHostsFile=/dev/null",
            // Without a host key given, the first one seen is kept and required from then on.
            "-o", $"StrictHostKeyChecking={(hostKeyKnown ? "yes" : "accept-new")}",
            "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3",
            "-p", address.Port.ToString(CultureInfo.InvariantCulture),
        })
        {
            info.ArgumentList.Add(argument);
        }

        if (address.User.Length > 0)
        {
            info.ArgumentList.Add("-l");
            info.ArgumentList.Add(address.User);
        }

        foreach (var argument in new[] { address.Host, "--", "nix-daemon", "--stdio" })
        {
            info.ArgumentList.Add(argument);
        }

        Process ssh;
        try
        {
            ssh = Process.Start(info) ?? throw new InvalidOperationException("no process");
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            throw new ExecutorUnavailableException(Unreachable, $"ssh could not be started: {e.Message}", counted: false, e);
        }

        var connection = new SshDaemonConnection(ssh);
        try
        {
            var fromDaemon = PipeReader.Create(connection._ssh.StandardOutput.BaseStream);
            var toDaemon = PipeWriter.Create(connection._ssh.StandardInput.BaseStream);
            // ConnectTimeout covers reaching the host; a daemon that never answers must not hold a slot either.
            using var handshake = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            handshake.CancelAfter(HandshakeTimeout);
            connection.Client = await WorkerClient.ConnectAsync(fromDaemon, toDaemon, handshake.Token).ConfigureAwait(false);
            if (requireTrusted && connection.Client.Trusted == false)
            {
                throw new NixErrorException($"the daemon does not trust user '{address.User}' (it must be in its trusted-users, as for any remote builder)");
            }

            return connection;
        }
        catch (Exception e) when (e is ProtocolViolationException or IOException or NixErrorException or Kiln.Nix.NixFormatException
            || (e is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            var why = await connection.ExitMessageAsync().ConfigureAwait(false);
            await connection.DisposeAsync().ConfigureAwait(false);
            throw new ExecutorUnavailableException(Unreachable, $"cannot reach the Nix daemon at {address}: {(e is NixErrorException || why.Length == 0 ? e.Message : why)}",
                counted: false, e);
        }
        catch
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>What ssh said before it ended (its last lines), waiting briefly for it to end.</summary>
    public async Task<string> ExitMessageAsync()
    {
        try
        {
            await _ssh.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            await _stderr.WaitAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // still running: what it said so far
        }

        lock (_messages)
        {
            return string.Join("; ", _messages);
        }
    }

    // ssh's (and the remote shell's) messages, in bounded pieces: the last few lines, each cut at 500 characters.
    private async Task ReadStderrAsync()
    {
        var buffer = new char[4096];
        var line = new System.Text.StringBuilder();
        int read;
        while ((read = await _ssh.StandardError.ReadAsync(buffer).ConfigureAwait(false)) > 0)
        {
            foreach (var c in buffer.AsSpan(0, read))
            {
                if (c == '\n')
                {
                    Keep(line.ToString());
                    line.Clear();
                }
                else if (line.Length < 500)
                {
                    line.Append(c);
                }
            }
        }

        Keep(line.ToString());
    }

    private void Keep(string line)
    {
        if (line.Trim().Length == 0)
        {
            return;
        }

        lock (_messages)
        {
            _messages.Enqueue(line.Trim());
            if (_messages.Count > 5)
            {
                _messages.Dequeue();
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            _ssh.StandardInput.Close(); // the daemon sees the end of its input and exits; ssh with it
        }
        catch (IOException)
        {
            // ssh is gone already
        }

        try
        {
            await _ssh.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            _ssh.Kill(entireProcessTree: true);
            await _ssh.WaitForExitAsync().ConfigureAwait(false);
        }

        await _stderr.ConfigureAwait(false);
        _ssh.Dispose();
    }
}
