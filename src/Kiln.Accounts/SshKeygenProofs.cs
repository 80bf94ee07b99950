using System.Diagnostics;
using System.Text;
using Kiln.Store.Accounts;

namespace Kiln.Accounts;

/// <summary>
/// <see cref="IKeyProofs"/> by OpenSSH's own <c>ssh-keygen -Y verify</c>, with the key as the only allowed signer and
/// <c>kiln</c> as the namespace, so a signature made for anything else (git commits, other services) is not accepted.
/// </summary>
public sealed class SshKeygenProofs(string sshKeygen = "ssh-keygen") : IKeyProofs
{
    public const string Namespace = "kiln";

    public async Task<bool> VerifyAsync(SshPublicKey key, string message, string signature, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(key);
        var armored = Armor(signature);
        if (armored is null)
        {
            return false;
        }

        var directory = Directory.CreateTempSubdirectory("kiln-proof-");
        try
        {
            var signers = Path.Combine(directory.FullName, "allowed_signers");
            var signatureFile = Path.Combine(directory.FullName, "proof.sig");
            await File.WriteAllTextAsync(signers, $"proof namespaces=\"{Namespace}\" {key.Type} {key.Blob}\n", cancellationToken).ConfigureAwait(false);
            await File.WriteAllTextAsync(signatureFile, armored, cancellationToken).ConfigureAwait(false);
            var start = new ProcessStartInfo(sshKeygen)
            {
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            foreach (var argument in new[] { "-Y", "verify", "-f", signers, "-I", "proof", "-n", Namespace, "-s", signatureFile })
            {
                start.ArgumentList.Add(argument);
            }

            using var process = Process.Start(start) ?? throw new InvalidOperationException("cannot run ssh-keygen");
            var output = process.StandardOutput.ReadToEndAsync(cancellationToken);
            var errors = process.StandardError.ReadToEndAsync(cancellationToken);
            try
            {
                await process.StandardInput.WriteAsync(message.AsMemory(), cancellationToken).ConfigureAwait(false);
                process.StandardInput.Close();
            }
            catch (IOException)
            {
                // ssh-keygen stopped before reading the message (a signature it rejects at once): its exit status says so.
                try
                {
                    process.StandardInput.BaseStream.Dispose();
                }
                catch (IOException)
                {
                }
            }

            await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
            await Task.WhenAll(output, errors).ConfigureAwait(false);
            return process.ExitCode == 0;
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }

    private const string Begin = "-----BEGIN SSH SIGNATURE-----";
    private const string End = "-----END SSH SIGNATURE-----";

    // The signature as ssh-keygen wrote it, or pasted on one line, or only its base64: always re-armored here.
    internal static string? Armor(string signature)
    {
        var body = signature.Replace(Begin, "", StringComparison.Ordinal).Replace(End, "", StringComparison.Ordinal);
        var base64 = new string(body.Where(c => !char.IsWhiteSpace(c)).ToArray());
        if (base64.Length is 0 or > 64 * 1024 || !base64.All(c => char.IsAsciiLetterOrDigit(c) || c is '+' or '/' or '='))
        {
            return null;
        }

        var text = new StringBuilder(Begin).Append('\n');
        for (var i = 0; i < base64.Length; i += 70)
        {
            text.Append(base64.AsSpan(i, Math.Min(70, base64.Length - i))).Append('\n');
        }

        return text.Append(End).Append('\n').ToString();
    }
}
