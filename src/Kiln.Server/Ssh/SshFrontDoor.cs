using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Kiln.Protocol;
using Kiln.Protocol.Worker;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kiln.Server.Ssh;

/// <summary>
/// The SSH front door: OpenSSH's sshd as a supervised child (restarted if it dies, stopped with Kiln), and the
/// bridge socket behind it. sshd authenticates a key through <c>kiln auth-keys</c> and runs <c>kiln-bridge</c>,
/// which connects here and says which key logged in and what the client asked for. Only the login user's
/// processes are believed (the kernel's peer credentials); the key's account and permissions decide the session.
/// </summary>
public sealed partial class SshFrontDoor(KilnStore store, ServerOptions options, WorkerSessionOptions sessionOptions,
    Kiln.Scheduler.BuildScheduler scheduler, Kiln.Accounts.AccountService accounts, ILogger<SshFrontDoor> logger) : BackgroundService
{
    private const int MaxHeader = 64 * 1024;

    /// <summary>How often a live session's key is looked at again (a removed key's sessions end within this).</summary>
    internal static readonly TimeSpan KeyCheckInterval = TimeSpan.FromSeconds(3);
    private long _nextSession;
    private volatile bool _sshdRunning;

    /// <summary>Whether the SSH front door is up (sshd running under Kiln); null when it is not configured (<c>--ssh-listen none</c>).</summary>
    public bool? SshdRunning => options.SshListen is null ? null : _sshdRunning;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (options.SshListen is null)
        {
            return;
        }

        SshInstallation ssh;
        try
        {
            ssh = SshInstallation.Prepare(options);
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException or System.ComponentModel.Win32Exception)
        {
            LogNoSsh(logger, e.Message);
            return;
        }

        if (File.Exists(ssh.BridgeSocket))
        {
            File.Delete(ssh.BridgeSocket);
        }

        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(ssh.BridgeSocket));
        File.SetUnixFileMode(ssh.BridgeSocket, (UnixFileMode)Convert.ToInt32("666", 8)); // who may speak is checked per connection
        listener.Listen(128);

        var sshd = Task.Run(() => SuperviseAsync(ssh, stoppingToken), CancellationToken.None);
        LogListening(logger, ssh.Address, ssh.Port, options.SshUser, ssh.HostPublicKey);
        if (!ssh.NativeBridge)
        {
            LogNoNativeBridge(logger);
        }

        try
        {
            await SocketListener.AcceptAllAsync(listener, ssh.BridgeSocket, client => ServeAsync(ssh, client, stoppingToken), options.ShutdownGrace, stoppingToken)
                .ConfigureAwait(false);
        }
        finally
        {
            await sshd.ConfigureAwait(false);
            Directory.Delete(ssh.RuntimeDirectory, recursive: true); // the auth-keys script and bridge copy under /run
        }
    }

    private const string Setpriv = "/usr/bin/setpriv";

    // Runs sshd in the foreground (-D) with its log on stderr (-e), restarting it when it exits unexpectedly.
    private async Task SuperviseAsync(SshInstallation ssh, CancellationToken stoppingToken)
    {
        Directory.CreateDirectory("/run/sshd"); // sshd's privilege separation directory
        var delay = TimeSpan.FromSeconds(1);
        while (!stoppingToken.IsCancellationRequested)
        {
            // Through setpriv --pdeathsig: sshd gets SIGTERM when Kiln dies, even by SIGKILL, instead of listening on
            // for a server that is gone (a restart would stop it, but until then logins fail).
            var setpriv = File.Exists(Setpriv);
            var start = new ProcessStartInfo(setpriv ? Setpriv : options.Sshd) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
            Kiln.Store.SecretEnvironment.RemoveFrom(start); // sshd and the sessions it starts have no use for them
            foreach (var argument in (setpriv ? ["--pdeathsig", "TERM", "--", options.Sshd] : Array.Empty<string>()).Concat(["-D", "-e", "-f", ssh.ConfigFile]))
            {
                start.ArgumentList.Add(argument);
            }

            using var process = await Kiln.Agent.ProcessParent.StartAsync(start).ConfigureAwait(false); // its pdeathsig follows the forking thread
            _sshdRunning = true;
            var started = Stopwatch.StartNew();
            process.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is { } line)
                {
                    LogSshd(logger, line);
                }
            };
            process.BeginErrorReadLine();
            try
            {
                await process.WaitForExitAsync(stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: false); // sshd's sessions end with their connections
                await process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
                return;
            }
            finally
            {
                _sshdRunning = false;
            }

            LogSshdExited(logger, process.ExitCode, delay.TotalSeconds);
            delay = started.Elapsed > TimeSpan.FromMinutes(1) ? TimeSpan.FromSeconds(1) : TimeSpan.FromSeconds(Math.Min(30, delay.TotalSeconds * 2));
            try
            {
                await Task.Delay(delay, stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>What the bridge says about the login; or, on a serve session's second connection, its stderr token.</summary>
    private sealed record BridgeHeader(long KeyId, string Command, IReadOnlyDictionary<string, string> Environment, string? StderrToken,
        (string Type, string Blob)? Auth = null);

    /// <summary>A serve session waiting for (then using) the bridge's connection for its stderr.</summary>
    private sealed class StderrSlot
    {
        public TaskCompletionSource<Stream> Connected { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, StderrSlot> _stderrSlots = new();

    private async Task ServeAsync(SshInstallation ssh, Socket socket, CancellationToken stoppingToken)
    {
        var id = Interlocked.Increment(ref _nextSession);
        var watch = Stopwatch.StartNew();
        using (socket)
        {
            var stream = new NetworkStream(socket, ownsSocket: false);
            await using (stream.ConfigureAwait(false))
            {
                try
                {
                    // Two kinds of caller: sshd's AuthorizedKeysCommand (root) asks about keys; the bridge (the login
                    // user, whom only sshd runs) starts sessions. Anyone else may connect but is told nothing.
                    var peer = PeerCredentials.Of(socket);
                    var fromSshd = peer?.UserId == 0;
                    if (peer is null || (peer.UserId != ssh.LoginUserId && !fromSshd))
                    {
                        LogRefusedPeer(logger, peer?.UserId ?? -1);

                        // Read its request before answering: closing with the request unread resets the connection,
                        // and the caller would see "server unreachable" instead of the refusal.
                        using (var drain = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken))
                        {
                            drain.CancelAfter(TimeSpan.FromSeconds(2));
                            try
                            {
                                await ReadHeaderAsync(stream, drain.Token).ConfigureAwait(false);
                            }
                            catch (OperationCanceledException) when (!stoppingToken.IsCancellationRequested)
                            {
                            }
                        }

                        await AnswerAsync(stream, "error: this socket is for Kiln's SSH bridge only", stoppingToken).ConfigureAwait(false);
                        return;
                    }

                    var header = await ReadHeaderAsync(stream, stoppingToken).ConfigureAwait(false);
                    if (fromSshd)
                    {
                        await AnswerKeyQueryAsync(stream, header?.Auth, stoppingToken).ConfigureAwait(false);
                        return;
                    }

                    if (header?.StderrToken is { } token)
                    {
                        if (_stderrSlots.TryGetValue(token, out var slot) && slot.Connected.TrySetResult(stream))
                        {
                            await slot.Done.Task.ConfigureAwait(false);
                        }

                        return;
                    }

                    var key = header is null ? null : await store.Accounts.GetSshKeyAsync(header.KeyId, stoppingToken).ConfigureAwait(false);
                    if (header is null || key is null || !key.Enabled)
                    {
                        await AnswerAsync(stream, "error: this key is not (or no longer) registered with Kiln", stoppingToken).ConfigureAwait(false);
                        return;
                    }

                    // From here the session lives as long as its key stands as it is (and the server runs).
                    using var keyWatch = new KeyWatch(store.Accounts, key, KeyCheckInterval, stoppingToken);
                    var sessionToken = keyWatch.Token;
                    string Ended(string? reason) => keyWatch.Revoked ? "its key was removed or changed" : reason ?? "client disconnected";
                    var command = string.Join(' ', header.Command.Split(' ', StringSplitOptions.RemoveEmptyEntries));
                    if (command is "nix-store --serve" or "nix-store --serve --write" && key.Permissions.HasFlag(KeyPermissions.StoreRead))
                    {
                        var serveLimits = await SessionLimitsAsync(key, header.Environment, sessionToken).ConfigureAwait(false);
                        var served = await ServeLegacyAsync(socket, stream, key, write: command.EndsWith("--write", StringComparison.Ordinal),
                            serveLimits.TagsWith(BuildTag.FromEnvironment(header.Environment)), serveLimits, sessionToken).ConfigureAwait(false);
                        var servedEnd = Ended(served.CloseReason);
                        LogSession(logger, id, key.AccountName, key.Fingerprint, command, servedEnd, served.Operations, watch.Elapsed.TotalSeconds);
                        return;
                    }

                    if (command is "" or "shell" or "kiln" || command.StartsWith("kiln ", StringComparison.Ordinal))
                    {
                        await AnswerAsync(stream, "ok framed", stoppingToken).ConfigureAwait(false);
                        using var shellView = store.OpenView(KilnStore.CallerForSshKey(key));
                        var shell = new AdminShell(accounts, key, shellView, stream, _serverSettings, (account, token) => Kiln.Push.PushKeys.PublicKeyAsync(store, account, token));
                        var shown = Printable(AdminShell.Logged(command));
                        try
                        {
                            if (command.StartsWith("kiln ", StringComparison.Ordinal))
                            {
                                await shell.RunOnceAsync(command["kiln ".Length..], sessionToken).ConfigureAwait(false);
                            }
                            else
                            {
                                await shell.RunInteractiveAsync(sessionToken).ConfigureAwait(false);
                            }
                        }
                        catch (OperationCanceledException) when (keyWatch.Revoked)
                        {
                        }

                        var shellEnd = Ended("shell closed");
                        LogSession(logger, id, key.AccountName, key.Fingerprint, shown, shellEnd, 0, watch.Elapsed.TotalSeconds);
                        return;
                    }

                    if (command != "nix-daemon --stdio")
                    {
                        var printable = Printable(command);
                        await AnswerAsync(stream, "error: " + Unsupported(command), stoppingToken).ConfigureAwait(false);
                        LogSession(logger, id, key.AccountName, key.Fingerprint, printable, "refused", 0, watch.Elapsed.TotalSeconds);
                        return;
                    }

                    if (!key.Permissions.HasFlag(KeyPermissions.StoreRead))
                    {
                        await AnswerAsync(stream, $"error: this key ({key.Fingerprint}) lacks the store:read permission", stoppingToken).ConfigureAwait(false);
                        return;
                    }

                    // (Read before the answer: a failure to read them ends the session before the client is told to go on.)
                    var limits = await SessionLimitsAsync(key, header.Environment, sessionToken).ConfigureAwait(false);
                    await AnswerAsync(stream, "ok", stoppingToken).ConfigureAwait(false);
                    using var view = store.OpenView(KilnStore.CallerForSshKey(key));
                    var summary = await DaemonSocketService.RunWorkerSessionAsync(socket, view, SessionOptions(key), scheduler, logger, sessionToken,
                        limits.TagsWith(BuildTag.FromEnvironment(header.Environment)), limits).ConfigureAwait(false);
                    var end = Ended(summary.CloseReason);
                    LogSession(logger, id, key.AccountName, key.Fingerprint, command, end, summary.Operations, watch.Elapsed.TotalSeconds);
                }
#pragma warning disable CA1031 // A session's failure must never reach the listener: log it and go on.
                catch (Exception e)
#pragma warning restore CA1031
                {
                    LogSessionFailed(logger, id, e);
                }
            }
        }
    }

    // The session's limits from the settings hierarchy: the server's, then the account's, the key's and the session's
    // environment (KILN_TIMEOUT=…), each only where it tightens (one query, at the session's start); where the account
    // reads derivations' attributes (settings-from-drv-env), each build's are resolved once more with them.
    private async Task<Kiln.Scheduler.SessionLimits> SessionLimitsAsync(SshKeyRecord key, IReadOnlyDictionary<string, string> environment, CancellationToken cancellationToken)
    {
        var stored = await store.Settings.GetSettingsAsync(key.AccountId, cancellationToken).ConfigureAwait(false);
        var scope = Kiln.Accounts.Settings.KeyScope(key.Fingerprint);
        var resolved = Kiln.Accounts.Settings.Resolve(_serverSettings, stored, scope, environment);
        var effective = Kiln.Accounts.Settings.ByName(resolved);
        var fromDerivations = effective[Kiln.Accounts.Settings.SettingsFromDrvEnv.Name] != 0;
        return Limits(effective) with
        {
            // (Account-wide: the session's pushes, whatever a derivation's attributes say.)
            PushTo = Kiln.Accounts.Settings.TextOf(resolved, Kiln.Accounts.Settings.PushTo).Split(' ', StringSplitOptions.RemoveEmptyEntries),
            PushReused = effective[Kiln.Accounts.Settings.PushReused.Name] != 0,
            Tags = Kiln.Accounts.Settings.TagsOf(Kiln.Accounts.Settings.TextOf(resolved, Kiln.Accounts.Settings.Tags)),
            ForDerivation = fromDerivations
                ? attributes => Limits(Kiln.Accounts.Settings.ByName(Kiln.Accounts.Settings.Resolve(_serverSettings, stored, scope, environment, attributes)))
                : null,
        };
    }

    private static Kiln.Scheduler.SessionLimits Limits(IReadOnlyDictionary<string, long> effective)
    {
        int Count(Kiln.Accounts.SettingDefinition setting) => (int)Math.Min(int.MaxValue, effective[setting.Name]);
        return new Kiln.Scheduler.SessionLimits(TimeSpan.FromSeconds(effective[Kiln.Accounts.Settings.Timeout.Name]),
            TimeSpan.FromSeconds(effective[Kiln.Accounts.Settings.MaxSilentTime.Name]), effective[Kiln.Accounts.Settings.MaxBuildLogSize.Name])
        {
            MaxJobs = Count(Kiln.Accounts.Settings.MaxJobs),
            MaxCores = Count(Kiln.Accounts.Settings.MaxCpu),
            MinCores = Count(Kiln.Accounts.Settings.MinCpu),
            DefaultCores = Count(Kiln.Accounts.Settings.DefaultCpu),
            MaxMemory = effective[Kiln.Accounts.Settings.MaxMem.Name],
            MinMemory = effective[Kiln.Accounts.Settings.MinMem.Name],
            CpuQuotaSeconds = effective[Kiln.Accounts.Settings.MaxCpuHoursPerMonth.Name],
            KeepBuildsRunning = effective[Kiln.Accounts.Settings.KeepBuildsRunning.Name] != 0,
            ReuseBuildFailures = effective[Kiln.Accounts.Settings.ReuseBuildFailures.Name] != 0,
            ReuseBuildTimeouts = effective[Kiln.Accounts.Settings.ReuseBuildTimeouts.Name] != 0,
        };
    }

    // The hierarchy's server level: kiln serve's limits, by setting name (the options do not change while it runs).
    private readonly IReadOnlyDictionary<string, long> _serverSettings = ServerSettings.Of(options);

    // The AuthorizedKeysCommand's question: which enabled key, if any, is this? "key ID" or "none".
    private async Task AnswerKeyQueryAsync(Stream stream, (string Type, string Blob)? offered, CancellationToken stoppingToken)
    {
        var key = offered is { } o ? await store.Accounts.FindSshKeyAsync(o.Type, o.Blob, stoppingToken).ConfigureAwait(false) : null;
        await AnswerAsync(stream, key is { Enabled: true } ? $"key {key.Id}" : "none", stoppingToken).ConfigureAwait(false);
    }

    // nix-store --serve: stdout on this connection, stderr on a second one the bridge opens with the token.
    private async Task<SessionSummary> ServeLegacyAsync(Socket socket, NetworkStream stream, SshKeyRecord key, bool write, IReadOnlyList<BuildTag> tags,
        Kiln.Scheduler.SessionLimits limits, CancellationToken stoppingToken)
    {
        var token = Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(16));
        var slot = new StderrSlot();
        _stderrSlots[token] = slot;
        try
        {
            await AnswerAsync(stream, $"ok stderr={token}", stoppingToken).ConfigureAwait(false);
            var errors = await slot.Connected.Task.WaitAsync(TimeSpan.FromSeconds(30), stoppingToken).ConfigureAwait(false);
            using var view = store.OpenView(KilnStore.CallerForSshKey(key));
            const string ReadOnly = "Kiln: this session is read-only (nix-store --serve without --write)";
            var keyOptions = SessionOptions(key);
            var serve = new Kiln.Protocol.Serve.ServeSession(view, scheduler.ForSession(view, tags, limits), new Kiln.Protocol.Serve.ServeSessionOptions
            {
                Limits = sessionOptions.Limits,
                UploadsDenied = write ? keyOptions.UploadsDenied : ReadOnly,
                BuildsDenied = write ? keyOptions.BuildsDenied : ReadOnly,
            }, logger);
            return await DaemonSocketService.RunOverConnectionAsync(socket, KilnMetrics.Protocols.Serve, (reader, writer, clientGone) =>
                serve.RunAsync(reader, writer, new DaemonSocketService.SocketFileSender(socket), async line =>
                {
                    await errors.WriteAsync(Encoding.UTF8.GetBytes(line + "\n"), stoppingToken).ConfigureAwait(false);
                    await errors.FlushAsync(stoppingToken).ConfigureAwait(false);
                }, stoppingToken, clientGone)).ConfigureAwait(false);
        }
        finally
        {
            _stderrSlots.TryRemove(token, out _);
            slot.Done.TrySetResult();
        }
    }

    private WorkerSessionOptions SessionOptions(SshKeyRecord key) => sessionOptions with
    {
        SignaturesAllowed = false, // a tenant's login is an untrusted client: Nix's daemon refuses it too
        UploadsDenied = key.Permissions.HasFlag(KeyPermissions.StoreWrite) ? null : $"Kiln: this key ({key.Fingerprint}) may not add to the store: it lacks the store:write permission",
        BuildsDenied = key.Permissions.HasFlag(KeyPermissions.BuildWrite) ? null : $"Kiln: this key ({key.Fingerprint}) may not build: it lacks the build:write permission",
    };

    private static string Unsupported(string command) => command switch
    {
        "nix-store --serve" or "nix-store --serve --write" => "this key lacks the store:read permission",
        _ => $"'{Printable(command)}' is not a command Kiln serves (Nix uses it as ssh-ng:// or ssh://)",
    };

    private static string Printable(string text)
    {
        var clean = new string(text.Select(c => char.IsControl(c) ? '?' : c).ToArray());
        return clean.Length > 80 ? clean[..80] + "…" : clean;
    }

    private static async Task AnswerAsync(Stream stream, string line, CancellationToken cancellationToken)
    {
        await stream.WriteAsync(Encoding.UTF8.GetBytes(line + "\n"), cancellationToken).ConfigureAwait(false);
        await stream.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    // One JSON line, read byte by byte so nothing of the session behind it is consumed; null if it is not one.
    private static async Task<BridgeHeader?> ReadHeaderAsync(Stream stream, CancellationToken cancellationToken)
    {
        var line = new MemoryStream();
        var one = new byte[1];
        while (true)
        {
            if (line.Length > MaxHeader || await stream.ReadAsync(one, cancellationToken).ConfigureAwait(false) == 0)
            {
                return null;
            }

            if (one[0] == (byte)'\n')
            {
                break;
            }

            line.WriteByte(one[0]);
        }

        try
        {
            using var json = JsonDocument.Parse(line.ToArray());
            var root = json.RootElement;
            var environment = new Dictionary<string, string>(StringComparer.Ordinal);
            if (root.TryGetProperty("env", out var env) && env.ValueKind == JsonValueKind.Object)
            {
                foreach (var variable in env.EnumerateObject().Where(v => v.Value.ValueKind == JsonValueKind.String))
                {
                    environment[variable.Name] = variable.Value.GetString()!;
                }
            }

            if (root.TryGetProperty("auth", out var auth) && auth.ValueKind == JsonValueKind.Object)
            {
                return new BridgeHeader(0, "", environment, null, (auth.GetProperty("type").GetString() ?? "", auth.GetProperty("key").GetString() ?? ""));
            }

            if (root.TryGetProperty("stderr", out var stderr) && stderr.ValueKind == JsonValueKind.String)
            {
                return new BridgeHeader(0, "", environment, stderr.GetString());
            }

            return new BridgeHeader(root.GetProperty("key").GetInt64(), root.GetProperty("command").GetString() ?? "", environment, null);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException)
        {
            return null;
        }
    }

    [LoggerMessage(EventId = LogEvents.NoSsh, Level = LogLevel.Warning, Message = "no SSH front door: {Reason}")]
    private static partial void LogNoSsh(ILogger logger, string reason);

    [LoggerMessage(EventId = LogEvents.SshListening, Level = LogLevel.Information, Message = "ssh: listening on {Address}:{Port} (log in as {User}); host key {HostKey}")]
    private static partial void LogListening(ILogger logger, string address, int port, string user, string hostKey);

    [LoggerMessage(EventId = LogEvents.NoNativeBridge, Level = LogLevel.Warning,
        Message = "ssh: no native kiln-bridge next to kiln (built with clang); every SSH login starts .NET twice and costs about 0.3 s more")]
    private static partial void LogNoNativeBridge(ILogger logger);

    [LoggerMessage(EventId = LogEvents.Sshd, Level = LogLevel.Debug, Message = "sshd: {Line}")]
    private static partial void LogSshd(ILogger logger, string line);

    [LoggerMessage(EventId = LogEvents.SshdExited, Level = LogLevel.Warning, Message = "sshd exited with status {Status}; restarting in {Seconds} s")]
    private static partial void LogSshdExited(ILogger logger, int status, double seconds);

    [LoggerMessage(EventId = LogEvents.BridgeRefusedPeer, Level = LogLevel.Warning, Message = "bridge socket: refused a connection from uid {Uid}")]
    private static partial void LogRefusedPeer(ILogger logger, int uid);

    [LoggerMessage(EventId = LogEvents.SshSession, Level = LogLevel.Information,
        Message = "ssh session {Id} account={Account} key={Fingerprint} command='{Command}' ops={Ops} seconds={Seconds:F2} end: {Reason}")]
    private static partial void LogSession(ILogger logger, long id, string account, string fingerprint, string command, string reason, int ops, double seconds);

    [LoggerMessage(EventId = LogEvents.SshSessionFailed, Level = LogLevel.Error, Message = "ssh session {Id} failed")]
    private static partial void LogSessionFailed(ILogger logger, long id, Exception exception);
}
