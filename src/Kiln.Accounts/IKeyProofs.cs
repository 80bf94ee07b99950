using Kiln.Store.Accounts;

namespace Kiln.Accounts;

/// <summary>Checks a proof that someone holds the private half of an SSH key: a signature of a message made with it.</summary>
public interface IKeyProofs
{
    /// <summary>Whether <paramref name="signature"/> (OpenSSH's <c>ssh-keygen -Y sign -n kiln</c> format) is <paramref name="key"/>'s signature of <paramref name="message"/>.</summary>
    Task<bool> VerifyAsync(SshPublicKey key, string message, string signature, CancellationToken cancellationToken);
}
