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
internal sealed class SshDaemonConnection : IAsyncDisposable
{
    private readonly Process _ssh;
    private readonly Task _stderr;
    private readonly Queue<string> _messages = new();

    private SshDaemonConnection(Process ssh)
    {
        _ssh = ssh;
        _stderr = Task.Run(ReadStderrAsync);
    }

    public WorkerClient Client { get; private set; } = null!;

    /// <summary>Logs in and shakes hands; a builder that cannot be reached is an <see cref="ExecutorUnavailableException"/>.</summary>
    public static async Task<SshDaemonConnection> OpenAsync(BuilderAddress address, string keyFile, string knownHostsFile, bool hostKeyKnown, CancellationToken cancellationToken)
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
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", $"IdentityFile={keyFile}",
            "-o", $"UserKnownHostsFile={knownHostsFile}", "-o", "GlobalKnownHostsFile=/dev/null",
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

        var connection = new SshDaemonConnection(Process.Start(info) ?? throw new ExecutorUnavailableException("ssh could not be started"));
        try
        {
            var fromDaemon = PipeReader.Create(connection._ssh.StandardOutput.BaseStream);
            var toDaemon = PipeWriter.Create(connection._ssh.StandardInput.BaseStream);
            connection.Client = await WorkerClient.ConnectAsync(fromDaemon, toDaemon, cancellationToken).ConfigureAwait(false);
            return connection;
        }
        catch (Exception e) when (e is ProtocolViolationException or IOException or NixErrorException)
        {
            var why = await connection.ExitMessageAsync().ConfigureAwait(false);
            await connection.DisposeAsync().ConfigureAwait(false);
            throw new ExecutorUnavailableException($"cannot reach the Nix daemon at {address}: {(why.Length > 0 ? why : e.Message)}", e);
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

    private async Task ReadStderrAsync()
    {
        while (await _ssh.StandardError.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            lock (_messages)
            {
                _messages.Enqueue(line.Trim());
                if (_messages.Count > 5)
                {
                    _messages.Dequeue();
                }
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
