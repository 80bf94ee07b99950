using System.Diagnostics;
using Kiln.Nix.Signing;
using Kiln.Store.Metadata;

namespace Kiln.Server;

/// <summary>
/// The service's own keys — the build key that signs what Kiln built from trusted inputs, and the SSH host key clients
/// pin — kept in the metadata (<see cref="ISettingsMetadata.GetOrAddServerSecretAsync"/>) and copied into the data
/// directory for those that read files (sshd; <c>kiln client-config</c>). So every front door on one database signs
/// with one key and shows one host key: a client does not notice which front door it reached. The first front door
/// to start stores its keys (an existing installation keeps the keys it had); later ones adopt them, replacing their own.
/// </summary>
public static class ServiceKeys
{
    /// <summary>The build key: the stored one, or this data directory's (made now if it has none), stored.</summary>
    public static async Task<SecretKey> BuildKeyAsync(string dataDirectory, ISettingsMetadata settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        var directory = Path.Combine(dataDirectory, "keys");
        Directory.CreateDirectory(directory);
        var file = Path.Combine(directory, "build.secret");
        var existing = File.Exists(file) ? File.ReadAllText(file).Trim() : null;
        var shared = await settings.GetOrAddServerSecretAsync("build-key", existing ?? SecretKey.Generate($"{Environment.MachineName}-kiln-1").ToString(), cancellationToken)
            .ConfigureAwait(false);
        var secret = SecretKey.Parse(shared);
        if (existing != shared)
        {
            WritePrivate(file, shared);
        }

        // The public half next to it, for operators and clients' trusted-public-keys (kiln client-config prints it).
        var publicFile = Path.Combine(directory, "build.public");
        var publicKey = secret.PublicKey.ToString();
        if (!File.Exists(publicFile) || File.ReadAllText(publicFile).Trim() != publicKey)
        {
            File.WriteAllText(publicFile, publicKey + "\n");
        }

        return secret;
    }

    /// <summary>Puts the stored SSH host key (or this directory's, made now if it has none, stored) where sshd reads it.</summary>
    public static async Task ShareHostKeyAsync(string sshDirectory, ISettingsMetadata settings, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(settings);
        Directory.CreateDirectory(sshDirectory);
        var file = Path.Combine(sshDirectory, "ssh_host_ed25519_key");
        if (!File.Exists(file))
        {
            SshKeygen("-q", "-t", "ed25519", "-N", "", "-C", $"kiln@{Environment.MachineName}", "-f", file);
        }

        var local = File.ReadAllText(file);
        var shared = await settings.GetOrAddServerSecretAsync("ssh-host-key", local, cancellationToken).ConfigureAwait(false);
        if (shared != local)
        {
            WritePrivate(file, shared);
            File.WriteAllText(file + ".pub", SshKeygen("-y", "-f", file));
        }
    }

    private static void WritePrivate(string file, string text) => Kiln.Store.DataDirectoryBindings.WritePrivateFile(file, text.EndsWith('\n') ? text : text + "\n");

    private static string SshKeygen(params string[] args)
    {
        var info = new ProcessStartInfo("ssh-keygen") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
        Kiln.Store.SecretEnvironment.RemoveFrom(info);
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        process.StandardInput.Close();
        var output = process.StandardOutput.ReadToEnd();
        var error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return process.ExitCode == 0 ? output : throw new InvalidOperationException($"ssh-keygen {string.Join(' ', args)} failed: {error}");
    }
}
