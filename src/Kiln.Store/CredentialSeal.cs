using System.Security.Cryptography;
using System.Text;
using Kiln.Protocol;

namespace Kiln.Store;

/// <summary>
/// Accounts' credentials (their netrc: passwords for private upstream caches, keys for the caches they push to) sealed
/// at rest with AES-256-GCM under a key kept outside the database — <c>DATA/keys/credentials.key</c>, made on first
/// use, or the file <c>kiln serve --credentials-key</c> names (every front door of one installation is given the same
/// one) — so a copy of the database (a backup, a dump) does not give them away. Text stored before sealing existed
/// is read as it is and sealed when next written.
/// </summary>
public sealed class CredentialSeal
{
    /// <summary>The data directory binding naming the key file, when it is not the default.</summary>
    public const string BindingFile = "credentials-key";

    private const string Prefix = "kiln-sealed-v1:";
    private const int NonceSize = 12, TagSize = 16;

    private readonly byte[] _key;

    private CredentialSeal(byte[] key) => _key = key;

    /// <summary>The data directory's key: the bound file's, else the default file's (made now if there is none).</summary>
    /// <exception cref="KilnException">The bound file is missing or is not a key.</exception>
    public static CredentialSeal ForDataDirectory(string dataDirectory)
    {
        var bound = DataDirectoryBindings.Read(dataDirectory, BindingFile);
        var file = bound ?? Path.Combine(Path.GetFullPath(dataDirectory), "keys", "credentials.key");
        if (!File.Exists(file))
        {
            if (bound is not null)
            {
                throw new KilnException(ErrorKind.Failed, $"the credentials key {file} (--credentials-key) is missing");
            }

            // Written whole beside it, then moved into place unless another process was first (its key is the one):
            // nobody ever reads a key file half written.
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            var temporary = $"{file}.{Guid.NewGuid():N}.tmp";
            try
            {
                using (var stream = new FileStream(temporary, new FileStreamOptions
                {
                    Mode = FileMode.CreateNew,
                    Access = FileAccess.Write,
                    UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
                }))
                {
                    stream.Write(Encoding.ASCII.GetBytes(NewKeyText() + "\n"));
                }

                File.Move(temporary, file, overwrite: false);
            }
            catch (IOException) when (File.Exists(file))
            {
            }
            finally
            {
                File.Delete(temporary);
            }
        }

        try
        {
            return FromText(File.ReadAllText(file), file);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new KilnException(ErrorKind.Failed, $"the credentials key {file} cannot be read: {e.Message}");
        }
    }

    /// <summary>A seal with the key written as base64 (32 bytes).</summary>
    public static CredentialSeal FromText(string text, string whence = "the credentials key")
    {
        ArgumentNullException.ThrowIfNull(text);
        try
        {
            var key = Convert.FromBase64String(text.Trim());
            return key.Length == 32 ? new CredentialSeal(key) : throw new FormatException();
        }
        catch (FormatException)
        {
            throw new KilnException(ErrorKind.Failed, $"{whence} is not a credentials key (32 bytes, base64)");
        }
    }

    /// <summary>The settings port over <paramref name="inner"/> with netrc sealed under the data directory's key (read when first needed).</summary>
    public static Metadata.ISettingsMetadata Sealing(Metadata.ISettingsMetadata inner, string dataDirectory) =>
        new SealedSettings(inner, new Lazy<CredentialSeal>(() => ForDataDirectory(dataDirectory), LazyThreadSafetyMode.PublicationOnly));

    /// <summary>Whether a stored text is sealed (rather than kept from before sealing).</summary>
    public static bool IsSealed(string stored) => stored?.StartsWith(Prefix, StringComparison.Ordinal) == true;

    /// <summary>Makes a key's text (for <c>--credentials-key</c> files).</summary>
    public static string NewKeyText() => Convert.ToBase64String(RandomNumberGenerator.GetBytes(32));

    /// <summary>The text sealed for <paramref name="account"/> (empty stays empty: no credentials); it opens for that account only.</summary>
    public string Seal(string text, long account)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (text.Length == 0)
        {
            return "";
        }

        var plain = Encoding.UTF8.GetBytes(text);
        var sealedBytes = new byte[NonceSize + plain.Length + TagSize];
        var nonce = sealedBytes.AsSpan(0, NonceSize);
        RandomNumberGenerator.Fill(nonce);
        using var aes = new AesGcm(_key, TagSize);
        aes.Encrypt(nonce, plain, sealedBytes.AsSpan(NonceSize, plain.Length), sealedBytes.AsSpan(NonceSize + plain.Length), Associated(account));
        return Prefix + Convert.ToBase64String(sealedBytes);
    }

    /// <summary>The text of what <see cref="Seal"/> wrote for <paramref name="account"/> (text stored unsealed is returned as it is).</summary>
    /// <exception cref="KilnException">It was sealed with another key or for another account, or damaged.</exception>
    public string Open(string stored, long account)
    {
        ArgumentNullException.ThrowIfNull(stored);
        if (!stored.StartsWith(Prefix, StringComparison.Ordinal))
        {
            return stored;
        }

        try
        {
            var sealedBytes = Convert.FromBase64String(stored[Prefix.Length..]);
            var length = sealedBytes.Length - NonceSize - TagSize;
            var plain = new byte[Math.Max(0, length)];
            using var aes = new AesGcm(_key, TagSize);
            aes.Decrypt(sealedBytes.AsSpan(0, NonceSize), sealedBytes.AsSpan(NonceSize, plain.Length), sealedBytes.AsSpan(NonceSize + plain.Length), plain, Associated(account));
            return Encoding.UTF8.GetString(plain);
        }
        catch (Exception e) when (e is FormatException or CryptographicException or ArgumentException)
        {
            throw new KilnException(ErrorKind.Failed,
                "the account's stored credentials cannot be opened with this server's credentials key (every front door needs the same --credentials-key); set them again");
        }
    }

    // Bound to the account: a sealed text copied onto another account's row (by someone who can write the database)
    // does not open there.
    private static byte[] Associated(long account) => Encoding.UTF8.GetBytes($"kiln account credentials {account}");
}
