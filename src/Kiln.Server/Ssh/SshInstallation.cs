using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace Kiln.Server.Ssh;

/// <summary>
/// Everything sshd needs to be Kiln's front door, made on start: the login user, an Ed25519 host key and a config in
/// DATA/ssh, and, in a root-owned directory under /run (sshd refuses an AuthorizedKeysCommand anywhere a non-root
/// user could write, such as /tmp or a user's checkout), the auth-keys script and a copy of the bridge that the
/// login user can run.
/// </summary>
public sealed record SshInstallation(string ConfigFile, string HostPublicKey, string Address, int Port, string BridgeSocket, int LoginUserId, string RuntimeDirectory,
    bool NativeBridge)
{
    private const string RuntimeRoot = "/run/kiln-ssh";

    private static readonly string[] ManagedBridgeFiles = ["kiln-bridge.dll", "kiln-bridge.runtimeconfig.json", "kiln-bridge.deps.json"];

    /// <summary>
    /// Where the server on <paramref name="dataDirectory"/> keeps the files sshd runs (the auth-keys script, the bridge's
    /// copy): under /run, one directory per data directory so several servers on one machine keep their own. The server
    /// removes it when it stops; one killed leaves it (on tmpfs, in memory) for its next start to reuse.
    /// </summary>
    public static string RuntimeDirectoryFor(string dataDirectory) =>
        Path.Combine(RuntimeRoot, Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(dataDirectory)))[..16]);

    /// <summary>
    /// Stops the sshd a previous run of this data directory left (kiln serve killed with SIGKILL, or by the OOM killer,
    /// leaves its sshd child listening on the port the new one needs). The data directory's lock is held, so an sshd
    /// running with this directory's configuration belongs to no live server.
    /// </summary>
    public static void StopOrphanedSshd(string pidFile, string config)
    {
        if (!File.Exists(pidFile) || !int.TryParse(File.ReadAllText(pidFile).Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var pid))
        {
            return;
        }

        try
        {
            var commandLine = File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ');
            if (!commandLine.Contains("sshd", StringComparison.Ordinal) || !commandLine.Contains(config, StringComparison.Ordinal))
            {
                return; // the PID was reused by something else
            }

            using var orphan = Process.GetProcessById(pid);
            orphan.Kill();
            orphan.WaitForExit(TimeSpan.FromSeconds(5));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or InvalidOperationException
            or System.ComponentModel.Win32Exception)
        {
            // gone already
        }
    }

    /// <summary>Prepares the files; throws <see cref="InvalidOperationException"/> with the reason when it cannot.</summary>
    public static SshInstallation Prepare(ServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var (address, port) = ParseListen(options.SshListen!);
        if (!File.Exists(options.Sshd))
        {
            throw new InvalidOperationException($"'{options.Sshd}' is missing (apt-get install openssh-server)");
        }

        if (Environment.UserName != "root")
        {
            throw new InvalidOperationException("the SSH front door needs Kiln to run as root (sshd switches to the login user)");
        }

        var ciphers = CiphersFor(options.SshCiphers);

        // Checked before anything is made (the dotnet host's path, below).
        foreach (var path in new[] { RuntimeDirectoryFor(options.DataDirectory), Path.Combine(options.SshDirectory, "bridge.sock") })
        {
            if (!ForcedCommandSafe(path))
            {
                throw new InvalidOperationException($"'{path}' has characters a forced command cannot carry (letters, digits and / . _ - + @ % # : , = only)");
            }
        }

        var uid = EnsureLoginUser(options.SshUser);
        var directory = options.SshDirectory;
        Directory.CreateDirectory(directory);
        File.SetUnixFileMode(directory, (UnixFileMode)Convert.ToInt32("755", 8)); // the login user reaches the bridge socket here
        var hostKey = Path.Combine(directory, "ssh_host_ed25519_key");
        if (!File.Exists(hostKey))
        {
            Run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", $"kiln@{Environment.MachineName}", "-f", hostKey);
        }

        var runtime = RuntimeDirectoryFor(options.DataDirectory);
        Directory.CreateDirectory(runtime);
        foreach (var dir in new[] { RuntimeRoot, runtime })
        {
            File.SetUnixFileMode(dir, (UnixFileMode)Convert.ToInt32("755", 8));
        }

        var bridgeSocket = Path.Combine(directory, "bridge.sock");

        // The bridge runs for every session and, as the AuthorizedKeysCommand's first resort, for every offered key:
        // the NativeAOT build starts in a few milliseconds; the framework-dependent one (where no native build was
        // made) costs a .NET start each time.
        var native = Path.Combine(AppContext.BaseDirectory, "native", "kiln-bridge");
        var isNative = File.Exists(native);
        (string Source, string Name, string Mode)[] files = isNative
            ? [(native, "kiln-bridge", "755")]
            : ManagedBridgeFiles.Select(f => (Path.Combine(AppContext.BaseDirectory, f), f, "644")).ToArray();
        foreach (var (source, name, mode) in files.Where(f => File.Exists(f.Source)))
        {
            // Written beside and renamed: a running bridge keeps its old file, and sshd never runs a half-written one.
            var target = Path.Combine(runtime, name);
            File.Copy(source, target + ".new", overwrite: true);
            File.SetUnixFileMode(target + ".new", (UnixFileMode)Convert.ToInt32(mode, 8));
            File.Move(target + ".new", target, overwrite: true);
        }

        var dotnet = isNative ? "" : DotnetHost();
        var bridgeProgram = isNative ? Path.Combine(runtime, "kiln-bridge") : $"{dotnet} {Path.Combine(runtime, "kiln-bridge.dll")}";
        var bridge = $"{bridgeProgram} --socket {bridgeSocket}";
        if (!ForcedCommandSafe(dotnet))
        {
            throw new InvalidOperationException($"'{dotnet}' has characters a forced command cannot carry");
        }

        // kiln auth-keys, which reads the database: sshd's AuthorizedKeysCommand without a native bridge, and with one
        // what the bridge becomes when the server cannot be asked. The native bridge is the command itself (a script
        // in front of it cost a shell's start and a fork per run, two runs per login); sshd splits its line as a
        // shell would, so the forced command the bridge prints (no quote or space in its parts, checked above) goes
        // in double quotes.
        var authKeys = Path.Combine(runtime, "auth-keys");
        File.WriteAllText(authKeys, $"""
            #!/bin/sh
            # sshd's AuthorizedKeysCommand for the Kiln server in {Quote(options.DataDirectory)} (written by kiln serve){(isNative ? ", when the server cannot be asked" : "")}.
            exec {KilnCommand()} auth-keys --data {Quote(options.DataDirectory)} --bridge {Quote(bridge)} "$@"

            """);
        File.SetUnixFileMode(authKeys, (UnixFileMode)Convert.ToInt32("755", 8));
        // (sshd expands % in the arguments: a data directory's own % is written %%.)
        var authKeysCommand = isNative
            ? $"{bridgeProgram} " + $"--auth-keys --socket {bridgeSocket} --bridge \"{bridge}\" --fallback {authKeys}".Replace("%", "%%", StringComparison.Ordinal)
            : authKeys;

        var config = Path.Combine(directory, "sshd_config");
        StopOrphanedSshd(Path.Combine(directory, "sshd.pid"), config);
        File.WriteAllText(config, $"""
            # Written by kiln serve on every start; edits are lost. Kiln supervises sshd -D -e -f {config}.
            Port {port}
            ListenAddress {address}
            HostKey {hostKey}
            PidFile {Path.Combine(directory, "sshd.pid")}
            AllowUsers {options.SshUser}
            AuthorizedKeysFile none
            AuthorizedKeysCommand {authKeysCommand} %u %t %k
            AuthorizedKeysCommandUser root
            PubkeyAuthentication yes
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            PermitRootLogin no
            UsePAM no
            PrintMotd no
            PrintLastLog no
            DisableForwarding yes
            PermitUserRC no
            AcceptEnv KILN_*{(ciphers is null ? "" : $"\nCiphers {ciphers}")}
            MaxStartups 1000:30:2000
            LoginGraceTime 30
            LogLevel INFO

            """);

        var publicKey = File.ReadAllText(hostKey + ".pub").Trim();
        return new SshInstallation(config, publicKey, address, port, bridgeSocket, uid, runtime, isNative);
    }

    /// <summary>
    /// The <c>Ciphers</c> line's list for sshd, or null for OpenSSH's own. A NAR goes through SSH at its cipher's speed
    /// (<c>nix copy</c> both ways, a remote build's inputs and outputs), and OpenSSH's clients take the first cipher of
    /// their own list that the server offers: chacha20-poly1305. On a CPU with AES instructions AES-GCM moves the same
    /// bytes with about two thirds of ssh's CPU (300 MiB through ssh on loopback here: 0.97 s against 0.65 s), so there
    /// the server offers the two AES-GCM ciphers alone — OpenSSH's own since 6.2 (2013), authenticated encryption like
    /// chacha20-poly1305, and outside the Terrapin prefix truncation (CVE-2023-48795) even with a client that lacks
    /// OpenSSH 9.6's strict key exchange (chacha20-poly1305 is safe only with it).
    /// Without AES instructions chacha20-poly1305 is the faster one: OpenSSH's own list stays. <c>--ssh-ciphers</c>
    /// names a list of the operator's (for a client without AES-GCM) or <c>default</c>.
    /// </summary>
    public static string? CiphersFor(string? configured)
    {
        if (configured is null)
        {
            var aes = System.Runtime.Intrinsics.X86.Aes.IsSupported || System.Runtime.Intrinsics.Arm.Aes.IsSupported;
            return aes ? "aes128-gcm@openssh.com,aes256-gcm@openssh.com" : null;
        }

        if (configured == "default")
        {
            return null;
        }

        // One line of names (sshd would refuse to start on a name it does not know, and Kiln would run without SSH): each,
        // after OpenSSH's +/-/^ (append, remove, put first), one that this OpenSSH knows (`ssh -Q cipher`, the same
        // library as sshd's; where there is no ssh client, the characters alone).
        var known = KnownCiphers();
        var names = configured.Length == 0 ? [] : configured.TrimStart('+', '-', '^').Split(',');
        if (names.Length == 0 || names.Any(n => n.Length == 0 || !n.All(c => char.IsAsciiLetterOrDigit(c) || c is '@' or '.' or '-') || (known is not null && !known.Contains(n))))
        {
            throw new InvalidOperationException($"--ssh-ciphers {System.Text.Json.JsonSerializer.Serialize(configured)} is not a list of the OpenSSH cipher names " +
                $"{(known is null ? "" : $"this host knows ({string.Join(',', known)}) ")}or 'default'");
        }

        return configured;
    }

    private static HashSet<string>? KnownCiphers()
    {
        try
        {
            var query = new System.Diagnostics.ProcessStartInfo("ssh") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            query.ArgumentList.Add("-Q");
            query.ArgumentList.Add("cipher");
            using var ssh = System.Diagnostics.Process.Start(query)!;
            var names = ssh.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            ssh.WaitForExit();
            return ssh.ExitCode == 0 && names.Length > 0 ? names.ToHashSet(StringComparer.Ordinal) : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null; // no ssh client here
        }
    }

    private static (string Address, int Port) ParseListen(string listen)
    {
        var colon = listen.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(listen[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
        {
            throw new InvalidOperationException($"--ssh-listen '{listen}' is not ADDRESS:PORT");
        }

        return (listen[..colon].Trim('[', ']'), port);
    }

    // The login user: a system user with a shell (sshd runs the forced command through it), home "/" (sshd changes
    // into it and complains on every login if it is missing) and no password. Its
    // password field is '*' rather than the locked '!', which sshd without PAM treats as "account locked".
    private static int EnsureLoginUser(string user)
    {
        if (UserId(user) is { } existing)
        {
            return existing;
        }

        try
        {
            Run("useradd", "--system", "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh", "--comment", "Kiln SSH logins", user);
            Run("usermod", "-p", "*", user);
        }
        catch (InvalidOperationException) when (UserId(user) is not null)
        {
            // Another Kiln on this machine created it at the same moment.
        }

        return UserId(user) ?? throw new InvalidOperationException($"could not create the user '{user}'");
    }

    private static int? UserId(string user)
    {
        foreach (var line in File.ReadLines("/etc/passwd"))
        {
            var fields = line.Split(':');
            if (fields.Length > 2 && fields[0] == user)
            {
                return int.Parse(fields[2], CultureInfo.InvariantCulture);
            }
        }

        return null;
    }

    // The dotnet host that runs Kiln: the bridge runs on the same runtime.
    private static string DotnetHost()
    {
        var runtime = RuntimeEnvironment.GetRuntimeDirectory(); // …/shared/Microsoft.NETCore.App/VERSION/
        var host = Path.GetFullPath(Path.Combine(runtime, "..", "..", "..", "dotnet"));
        return File.Exists(host) ? host : throw new InvalidOperationException($"cannot find the dotnet host next to {runtime}");
    }

    // How to start this same kiln: its apphost, or dotnet with its assembly when run as 'dotnet kiln.dll'.
    private static string KilnCommand()
    {
        var process = Environment.ProcessPath ?? throw new InvalidOperationException("cannot tell which program Kiln is");
        return Path.GetFileNameWithoutExtension(process) == "dotnet"
            ? $"{Quote(process)} {Quote(Path.Combine(AppContext.BaseDirectory, "kiln.dll"))}"
            : Quote(process);
    }

    // The forced command is one double-quoted authorized_keys option that the login shell runs, and the
    // AuthorizedKeysCommand a line sshd splits itself: paths in them hold only characters neither gives a meaning to
    // (no quotes, spaces or backslashes; none of ; & | < > ( ) $ ` * ? [ ~ for the shell).
    private static bool ForcedCommandSafe(string path) =>
        path.All(c => char.IsAsciiLetterOrDigit(c) || c is '/' or '.' or '_' or '-' or '+' or '@' or '%' or '#' or ':' or ',' or '=');

    private static string Quote(string text) => "'" + text.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    private static void Run(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot run {program}");
        var errors = process.StandardError.ReadToEnd();
        process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{program} failed: {errors.Trim()}");
        }
    }
}
