using System.Diagnostics;
using System.Globalization;
using System.IO.Pipelines;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// A stock Nix 2.34 remote builder: a private OpenSSH sshd on a free port of 127.0.0.1 whose every session runs the
/// sid chroot's <c>nix-daemon --stdio</c> (<c>nix-store --serve --write</c> for ssh://) on a store of its own, with
/// the real sandbox on. Kiln reaches it at <see cref="Uri"/> as root with <see cref="ClientKeyPath"/>, pinning
/// <see cref="HostKeyLine"/>. The daemon trusts its client (<c>--stdio</c> always does) and builds as root.
/// </summary>
public sealed class StockNixBuilder : IDisposable
{
    private readonly TempDir _temp = new();
    private readonly Process _process;
    private readonly ProcessOutput _output;
    private readonly string _state;

    /// <param name="features">The daemon's <c>system-features</c> (space-separated).</param>
    public StockNixBuilder(string features = "kiln-stock-feature")
    {
        ArgumentNullException.ThrowIfNull(features);
        var sid = NixClient.For("2.34.8");

        // The store lives in the chroot's scratch directory, so setup-clients.sh sweeps it up after a killed run. Each
        // session bind-mounts its nix/ over the chroot's /nix: the chroot's own store is never touched, and a fresh
        // /nix/var has no daemon socket (with one, `nix-daemon --stdio` would forward to it instead of serving).
        var inside = $"{NixClient.ScratchDirectory}/stock-{Guid.NewGuid():N}";
        _state = sid.HostPath(inside);
        StoreDirectory = Path.Combine(_state, "nix", "store");
        Directory.CreateDirectory(StoreDirectory);
        Directory.CreateDirectory(Path.Combine(_state, "old")); // where pivot_root puts the host's root, then drops it
        ClientKeyPath = _temp["client_key"];
        try
        {
            if ((sid.Root + inside + _temp.Path + features).IndexOfAny(['\'', '\n']) >= 0)
            {
                throw new ArgumentException("paths and features must not hold quotes or newlines", nameof(features));
            }

            KeyGen(_temp["host_key"]);
            KeyGen(ClientKeyPath); // ssh-keygen writes private keys 0600
        }
        catch
        {
            RemoveDirectories();
            throw;
        }

        HostKeyLine = string.Join(' ', File.ReadAllText(_temp["host_key.pub"]).Split(' ').Take(2));
        File.Copy(ClientKeyPath + ".pub", _temp["authorized_keys"]);

        // sandbox-fallback = false: a sandbox Nix cannot set up is an error, never a silent unsandboxed build. The
        // sandbox runs builds as uid 1000 of a user namespace, so no nixbld group (absent in the chroot) is needed.
        File.WriteAllText(_temp["nix.conf"], $"""
            experimental-features = nix-command
            build-users-group =
            sandbox = true
            sandbox-fallback = false
            substituters =
            system-features = {features}
            trusted-users = root

            """);

        // The ForceCommand. The client's own command only picks which stock server runs: nothing it says is executed.
        // pivot_root, not chroot: the kernel refuses new user namespaces (which the sandbox needs) to a chrooted
        // process. /proc is for Nix itself, a devpts instance for the builder's pseudoterminal. The mounts live in
        // the session's namespace and go with its last process.
        File.WriteAllText(_temp["daemon.sh"], $$"""
            #!/bin/sh
            PATH=/usr/sbin:/usr/bin:/sbin:/bin
            case "$SSH_ORIGINAL_COMMAND" in
              "nix-store --serve"*) set -- nix-store --serve --write ;;
              *) set -- nix-daemon --stdio ;;
            esac
            exec unshare --mount --propagation private -- sh -c '
            set -e
            root="$1"; inside="$2"; config="$3"; shift 3
            mount --bind "$root" "$root"
            mount --bind "$root$inside/nix" "$root/nix"
            mount -t proc proc "$root/proc"
            mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts"
            cd "$root"
            pivot_root . ".$inside/old"
            cd /
            umount -l "$inside/old"
            exec /usr/bin/env -i HOME=/tmp PATH=/usr/bin:/bin NIX_CONFIG="$config" "$@"
            ' sh '{{sid.Root}}' '{{inside}}' "$(cat '{{_temp["nix.conf"]}}')" "$@"

            """);
        File.SetUnixFileMode(_temp["daemon.sh"], (UnixFileMode)Convert.ToInt32("755", 8));

        Port = KilnProcess.FreePort();
        File.WriteAllText(_temp["sshd_config"], $"""
            ListenAddress 127.0.0.1
            Port {Port.ToString(CultureInfo.InvariantCulture)}
            HostKey {_temp["host_key"]}
            PidFile {_temp["sshd.pid"]}
            AuthorizedKeysFile {_temp["authorized_keys"]}
            PermitRootLogin prohibit-password
            StrictModes no
            UsePAM no
            PasswordAuthentication no
            KbdInteractiveAuthentication no
            ForceCommand {_temp["daemon.sh"]}

            """);

        // -D keeps sshd in the foreground, so the PID is the listener's; sshd re-executes itself, hence the full path.
        var info = new ProcessStartInfo("/usr/sbin/sshd") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { "-D", "-e", "-f", _temp["sshd_config"] })
        {
            info.ArgumentList.Add(arg);
        }

        _process = Process.Start(info)!;
        _output = new ProcessOutput(_process);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!Log.Contains("Server listening on", StringComparison.Ordinal))
        {
            if (_process.HasExited || DateTime.UtcNow > deadline)
            {
                var log = Log;
                Dispose(); // nothing outlives the test that started it
                throw new InvalidOperationException($"the stock builder's sshd did not start:\n{log}");
            }

            Thread.Sleep(20);
        }
    }

    private static void KeyGen(string path)
    {
        var result = Processes.Run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "kiln-stock-builder", "-f", path]);
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException($"ssh-keygen failed: {result.Stderr}");
        }
    }

    /// <summary>The port sshd listens on, on 127.0.0.1.</summary>
    public int Port { get; }

    /// <summary>The private key root logs in with (0600).</summary>
    public string ClientKeyPath { get; }

    /// <summary>sshd's public host key: <c>ssh-ed25519 AAAA…</c>.</summary>
    public string HostKeyLine { get; }

    /// <summary>The host key as known_hosts wants it: <c>[127.0.0.1]:PORT ssh-ed25519 AAAA…</c>.</summary>
    public string KnownHostsLine => $"[127.0.0.1]:{Port.ToString(CultureInfo.InvariantCulture)} {HostKeyLine}";

    public string Uri => $"ssh-ng://root@127.0.0.1:{Port.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>The daemon's /nix/store, on the host.</summary>
    public string StoreDirectory { get; }

    /// <summary>What sshd has logged so far (the daemon's own stderr goes to the client, over SSH).</summary>
    public string Log => _output.Text;

    /// <summary>
    /// Puts <paramref name="nar"/> at <paramref name="path"/> in the builder's store, as its own users could, through its
    /// daemon (over SSH, with the worker protocol's client).
    /// </summary>
    public Task AddAsync(StorePath path, byte[] nar) => WithDaemonAsync(async daemon =>
    {
        var hash = NixHash.Compute(NixHashAlgorithm.Sha256, nar);
        await daemon.AddToStoreNarAsync(new ValidPathInfo { Path = path, NarHash = hash, NarSize = nar.Length }, new MemoryStream(nar), repair: false, CancellationToken.None);
        return true;
    });

    /// <summary>What the builder's daemon says of <paramref name="path"/> (null: not valid there).</summary>
    public Task<ValidPathInfo?> PathInfoAsync(StorePath path) => WithDaemonAsync(daemon => daemon.QueryPathInfoAsync(path, CancellationToken.None));

    /// <summary>Lets another key log in as root (Kiln's push key, say).</summary>
    public void Authorize(string publicKeyLine) => File.AppendAllText(_temp["authorized_keys"], publicKeyLine.Trim() + "\n");

    // One session with the builder's daemon, as root with the test's own key.
    private async Task<T> WithDaemonAsync<T>(Func<WorkerClient, Task<T>> work)
    {
        var knownHosts = Path.Combine(_temp.Path, "test_known_hosts");
        File.WriteAllText(knownHosts, KnownHostsLine + "\n");
        var info = new ProcessStartInfo("ssh") { RedirectStandardInput = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var argument in new[]
        {
            "-F", "/dev/null", "-o", "BatchMode=yes", "-o", $"UserKnownHostsFile={knownHosts}", "-i", ClientKeyPath,
            "-p", Port.ToString(CultureInfo.InvariantCulture), "root@127.0.0.1", "--", "nix-daemon", "--stdio",
        })
        {
            info.ArgumentList.Add(argument);
        }

        using var ssh = Process.Start(info)!;
        var daemon = await WorkerClient.ConnectAsync(PipeReader.Create(ssh.StandardOutput.BaseStream), PipeWriter.Create(ssh.StandardInput.BaseStream), CancellationToken.None);
        var result = await work(daemon);
        ssh.StandardInput.Close();
        await ssh.WaitForExitAsync();
        return result;
    }

    public void Dispose()
    {
        try
        {
            // Every session (sshd child, then the daemon it execs, then its builders) descends from the listener, so
            // killing the tree leaves no daemon writing into the store about to be removed.
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
            }

            _process.WaitForExit();
        }
        finally
        {
            _process.Dispose();
            RemoveDirectories();
        }
    }

    private void RemoveDirectories()
    {
        _temp.Dispose();

        // No mount is visible here (they were the sessions'); --one-file-system keeps rm out of one that is.
        Processes.Run("rm", ["-rf", "--one-file-system", _state]);
    }
}
