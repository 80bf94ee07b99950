using System.Diagnostics;
using Kiln.Store;

namespace Kiln.Push;

/// <summary>
/// Each account's push key: an SSH key pair Kiln makes for the account on first use, whose public half the account
/// adds to its <c>ssh-ng://</c> targets' <c>authorized_keys</c> (<c>kiln account push-key ACCOUNT</c>, the shell's
/// <c>push-key</c>). The private half never leaves the server: it is kept with the service's secrets (one for every
/// front door, the first one made wins), sealed with the credentials key.
/// </summary>
public static class PushKeys
{
    private static string SecretName(long account) => $"push-ssh-key:{account}";

    /// <summary>The account's push key's public line (<c>ssh-ed25519 AAAA… kiln-push-ACCOUNT</c>), made now if it has none.</summary>
    public static async Task<string> PublicKeyAsync(KilnStore store, long account, CancellationToken cancellationToken) =>
        (await GetOrCreateAsync(store, account, cancellationToken).ConfigureAwait(false)).Public;

    /// <summary>The account's push key, both halves (the private one in OpenSSH's format), made now if it has none.</summary>
    internal static async Task<(string Public, string Private)> GetOrCreateAsync(KilnStore store, long account, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        var candidate = await GenerateAsync(store.Options.TemporaryDirectory, $"kiln-push-{account}", cancellationToken).ConfigureAwait(false);
        var kept = await store.Settings.GetOrAddServerSecretAsync(SecretName(account),
            candidate.Public + "\n" + store.CredentialSeal.Seal(candidate.Private, account), cancellationToken).ConfigureAwait(false);
        var newline = kept.IndexOf('\n', StringComparison.Ordinal);
        return (kept[..newline], store.CredentialSeal.Open(kept[(newline + 1)..], account));
    }

    // ssh-keygen makes the pair (OpenSSH's own private key format, which ssh reads) in a directory only Kiln reads.
    private static async Task<(string Public, string Private)> GenerateAsync(string temporaryDirectory, string comment, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(temporaryDirectory);
        var directory = PushOptions.PrivateDirectory(temporaryDirectory, "push-key-");
        try
        {
            var file = Path.Combine(directory, "key");
            var info = new ProcessStartInfo("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file])
            {
                RedirectStandardError = true,
                RedirectStandardOutput = true,
                UseShellExecute = false,
            };
            using var keygen = Process.Start(info) ?? throw new InvalidOperationException("ssh-keygen did not start");
            var errors = keygen.StandardError.ReadToEndAsync(cancellationToken);
            await keygen.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            if (keygen.ExitCode != 0)
            {
                throw new InvalidOperationException($"ssh-keygen failed: {await errors.ConfigureAwait(false)}");
            }

            return ((await File.ReadAllTextAsync(file + ".pub", cancellationToken).ConfigureAwait(false)).Trim(),
                await File.ReadAllTextAsync(file, cancellationToken).ConfigureAwait(false));
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
