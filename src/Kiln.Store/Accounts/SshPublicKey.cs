using System.Buffers.Binary;
using System.Text;
using Kiln.Nix.Hashing;

namespace Kiln.Store.Accounts;

/// <summary>
/// An SSH public key as an <c>authorized_keys</c> line has it (<c>TYPE BASE64 [comment]</c>), checked: a key type
/// OpenSSH knows, base64 that decodes, and a blob that names the same type. The fingerprint is OpenSSH's
/// (<c>SHA256:</c> and the unpadded base64 of the blob's SHA-256), so operators can match it with
/// <c>ssh-keygen -l</c>.
/// </summary>
public sealed record SshPublicKey(string Type, string Blob, string Comment)
{
    private static readonly HashSet<string> KnownTypes =
    [
        "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    ];

    public string Fingerprint => "SHA256:" + Convert.ToBase64String(ShortSha256.Hash(Convert.FromBase64String(Blob))).TrimEnd('=');

    /// <summary>The key as an authorized_keys line (without options).</summary>
    public override string ToString() => Comment.Length > 0 ? $"{Type} {Blob} {Comment}" : $"{Type} {Blob}";

    /// <summary>Parses <c>TYPE BASE64 [comment]</c>.</summary>
    /// <exception cref="ArgumentException">It is not such a key; the message says why.</exception>
    public static SshPublicKey Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parts = text.Trim().Split([' ', '\t'], 3, StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 2)
        {
            throw new ArgumentException("an SSH public key is 'TYPE BASE64 [COMMENT]', as in ~/.ssh/id_ed25519.pub");
        }

        return FromParts(parts[0], parts[1], parts.Length > 2 ? parts[2].Trim() : "");
    }

    /// <summary>A key from its type and base64 blob (as sshd passes them to an AuthorizedKeysCommand: %t %k).</summary>
    /// <exception cref="ArgumentException">They do not make a key.</exception>
    public static SshPublicKey FromParts(string type, string blob, string comment = "")
    {
        if (!KnownTypes.Contains(type))
        {
            throw new ArgumentException($"'{Shorten(type)}' is not an SSH key type Kiln accepts (options before the key are not supported)");
        }

        byte[] bytes;
        try
        {
            bytes = Convert.FromBase64String(blob);
        }
        catch (FormatException)
        {
            throw new ArgumentException("the key's base64 does not decode");
        }

        // The blob starts with the key type as an SSH string: uint32 length, then the name.
        if (bytes.Length < 4 || BinaryPrimitives.ReadUInt32BigEndian(bytes) is var length && length > bytes.Length - 4 ||
            Encoding.ASCII.GetString(bytes, 4, (int)length) != type)
        {
            throw new ArgumentException($"the key's data is not a {type} key");
        }

        if (comment.Any(char.IsControl))
        {
            throw new ArgumentException("the key's comment contains control characters");
        }

        return new SshPublicKey(type, Convert.ToBase64String(bytes), comment);
    }

    private static string Shorten(string text) => text.Length > 40 ? text[..40] + "…" : text;
}
