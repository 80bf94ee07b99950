using System.Security.Cryptography;
using System.Text;
using Org.BouncyCastle.Math.EC.Rfc8032;

namespace Kiln.Nix.Signing;

/// <summary>A key file or signature that does not parse.</summary>
public sealed class BadKeyException(string message) : NixFormatException(message);

/// <summary>
/// An Ed25519 secret key in Nix's format <c>name:base64(64 bytes)</c>, the 64 bytes being libsodium's secret key:
/// the 32-byte seed followed by the 32-byte public key (as <c>nix-store --generate-binary-cache-key</c> and
/// <c>nix key generate-secret</c> write it). Signatures are <c>name:base64(64-byte detached signature)</c>.
/// </summary>
public sealed class SecretKey
{
    private readonly byte[] _seed;

    private SecretKey(string name, byte[] seed)
    {
        Name = name;
        _seed = seed;
        var publicKey = new byte[Ed25519.PublicKeySize];
        Ed25519.GeneratePublicKey(seed, 0, publicKey, 0);
        PublicKey = new PublicKey(name, publicKey);
    }

    /// <summary>The key's name (the part before the colon), e.g. <c>cache.example.org-1</c>.</summary>
    public string Name { get; }

    /// <summary>The matching public key.</summary>
    public PublicKey PublicKey { get; }

    /// <summary>Generates a new random key.</summary>
    public static SecretKey Generate(string name)
    {
        KeyText.CheckName(name);
        return new SecretKey(name, RandomNumberGenerator.GetBytes(Ed25519.SecretKeySize));
    }

    /// <summary>Builds a key from a 32-byte seed (tests and deterministic fixtures).</summary>
    public static SecretKey FromSeed(string name, ReadOnlySpan<byte> seed)
    {
        KeyText.CheckName(name);
        if (seed.Length != Ed25519.SecretKeySize)
        {
            throw new BadKeyException("an Ed25519 seed is 32 bytes");
        }

        return new SecretKey(name, seed.ToArray());
    }

    /// <summary>Parses <c>name:base64</c>.</summary>
    /// <exception cref="BadKeyException">Malformed, the wrong size, or its public half does not match its seed.</exception>
    public static SecretKey Parse(string text)
    {
        var (name, bytes) = KeyText.Split(text, "secret key");
        if (bytes.Length != Ed25519.SecretKeySize + Ed25519.PublicKeySize)
        {
            throw new BadKeyException($"secret key '{name}' is not valid: it must be 64 bytes, not {bytes.Length}");
        }

        var key = new SecretKey(name, bytes[..Ed25519.SecretKeySize]);
        if (!key.PublicKey.KeyBytes.SequenceEqual(bytes.AsSpan(Ed25519.SecretKeySize)))
        {
            throw new BadKeyException($"secret key '{name}' is corrupt: its public half does not match its seed");
        }

        return key;
    }

    /// <summary>Signs <paramref name="message"/> and returns <c>name:base64(signature)</c>.</summary>
    public string Sign(ReadOnlySpan<byte> message)
    {
        var signature = new byte[Ed25519.SignatureSize];
        Ed25519.Sign(_seed, 0, message.ToArray(), 0, message.Length, signature, 0);
        return $"{Name}:{Convert.ToBase64String(signature)}";
    }

    /// <summary>Signs the UTF-8 bytes of <paramref name="message"/>.</summary>
    public string Sign(string message) => Sign(Encoding.UTF8.GetBytes(message));

    /// <summary>The key file text, <c>name:base64(seed ‖ public key)</c>.</summary>
    public override string ToString() =>
        $"{Name}:{Convert.ToBase64String([.. _seed, .. PublicKey.KeyBytes])}";
}

/// <summary>An Ed25519 public key in Nix's format <c>name:base64(32 bytes)</c>, as listed in <c>trusted-public-keys</c>.</summary>
public sealed class PublicKey
{
    private readonly byte[] _key;

    internal PublicKey(string name, byte[] key)
    {
        Name = name;
        _key = key;
    }

    /// <summary>The key's name.</summary>
    public string Name { get; }

    /// <summary>The 32 key bytes.</summary>
    public ReadOnlySpan<byte> KeyBytes => _key;

    /// <summary>Parses <c>name:base64</c>.</summary>
    /// <exception cref="BadKeyException">Malformed or not 32 bytes.</exception>
    public static PublicKey Parse(string text)
    {
        var (name, bytes) = KeyText.Split(text, "public key");
        if (bytes.Length != Ed25519.PublicKeySize)
        {
            throw new BadKeyException($"public key '{name}' is not valid: it must be 32 bytes, not {bytes.Length}");
        }

        return new PublicKey(name, bytes);
    }

    /// <summary>
    /// Whether <paramref name="signature"/> (<c>name:base64</c>) is this key's valid signature of <paramref name="message"/>.
    /// A signature by a differently named key, or one that does not decode, is simply not valid.
    /// </summary>
    public bool Verify(ReadOnlySpan<byte> message, string signature)
    {
        ArgumentNullException.ThrowIfNull(signature);
        var colon = signature.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0 || signature.AsSpan(0, colon).SequenceEqual(Name) is false)
        {
            return false;
        }

        if (!NixBase64.TryDecode(signature.AsSpan(colon + 1), out var bytes) || bytes.Length != Ed25519.SignatureSize)
        {
            return false;
        }

        return Ed25519.Verify(bytes, 0, _key, 0, message.ToArray(), 0, message.Length);
    }

    /// <summary>Verifies a signature over the UTF-8 bytes of <paramref name="message"/>.</summary>
    public bool Verify(string message, string signature) => Verify(Encoding.UTF8.GetBytes(message), signature);

    /// <summary><c>name:base64</c>.</summary>
    public override string ToString() => $"{Name}:{Convert.ToBase64String(_key)}";
}

internal static class KeyText
{
    internal static (string Name, byte[] Bytes) Split(string text, string what)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = text.Trim();
        var colon = text.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0 || colon == text.Length - 1)
        {
            throw new BadKeyException($"{what} is corrupt: expected 'name:base64'");
        }

        var name = text[..colon];
        // (A key's name goes into narinfo Sig: lines and listings: no spaces, line breaks or control characters.)
        if (name.Any(c => char.IsWhiteSpace(c) || char.IsControl(c)))
        {
            throw new BadKeyException($"{what} is corrupt: its name has spaces or control characters");
        }

        if (!NixBase64.TryDecode(text.AsSpan(colon + 1), out var bytes))
        {
            throw new BadKeyException($"{what} '{name}' is corrupt: invalid base64");
        }

        return (name, bytes);
    }

    internal static void CheckName(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (name.Length == 0 || name.Contains(':', StringComparison.Ordinal) || name.Any(c => char.IsWhiteSpace(c) || char.IsControl(c)))
        {
            throw new BadKeyException($"invalid key name '{name}': it must be non-empty, without ':' or spaces");
        }
    }
}
