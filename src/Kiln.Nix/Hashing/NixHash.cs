using System.Security.Cryptography;

namespace Kiln.Nix.Hashing;

/// <summary>How a hash is printed.</summary>
public enum HashFormat
{
    /// <summary>Lowercase hexadecimal.</summary>
    Base16,

    /// <summary>Nix's base32 (<see cref="Nix32"/>).</summary>
    Nix32,

    /// <summary>Standard base64 with padding.</summary>
    Base64,

    /// <summary>Subresource integrity: <c>algo-base64</c>; the algorithm is always included.</summary>
    Sri,
}

/// <summary>
/// A digest together with its algorithm. Parsing follows Nix's <c>Hash::parseAny</c> family
/// (<c>src/libutil/hash.cc</c>): a string is <c>algo:digest</c> (digest in base16, Nix32 or base64, told apart
/// by length), SRI <c>algo-base64</c>, or an unprefixed digest when the algorithm is known from context.
/// A prefix that disagrees with the expected algorithm is an error, as in Nix.
/// </summary>
public readonly struct NixHash : IEquatable<NixHash>
{
    private readonly byte[] _digest;

    /// <summary>Wraps <paramref name="digest"/>, which must be exactly the algorithm's size.</summary>
    public NixHash(NixHashAlgorithm algorithm, ReadOnlySpan<byte> digest)
    {
        if (digest.Length != algorithm.Size())
        {
            throw new ArgumentException($"a {algorithm.Name()} digest is {algorithm.Size()} bytes, not {digest.Length}", nameof(digest));
        }

        Algorithm = algorithm;
        _digest = digest.ToArray();
    }

    /// <summary>The algorithm that produced the digest.</summary>
    public NixHashAlgorithm Algorithm { get; }

    /// <summary>The raw digest bytes.</summary>
    public ReadOnlySpan<byte> Digest => _digest;

    /// <summary>Hashes <paramref name="data"/> with <paramref name="algorithm"/>.</summary>
    public static NixHash Compute(NixHashAlgorithm algorithm, ReadOnlySpan<byte> data)
    {
        Span<byte> digest = stackalloc byte[algorithm.Size()];

        // MD5 and SHA-1 are weak, but Nix still names them in fixed-output hashes and users still pin them.
#pragma warning disable CA5350, CA5351
        switch (algorithm)
        {
            case NixHashAlgorithm.Md5: MD5.HashData(data, digest); break;
            case NixHashAlgorithm.Sha1: SHA1.HashData(data, digest); break;
            case NixHashAlgorithm.Sha256: SHA256.HashData(data, digest); break;
            case NixHashAlgorithm.Sha512: SHA512.HashData(data, digest); break;
        }
#pragma warning restore CA5350, CA5351

        return new NixHash(algorithm, digest);
    }

    /// <summary>Hashes the bytes <paramref name="text"/> stands for (UTF-8, with <see cref="NixString"/> escapes as raw bytes).</summary>
    public static NixHash Compute(NixHashAlgorithm algorithm, string text) =>
        Compute(algorithm, NixString.Encode(text));

    /// <summary>
    /// Parses a hash that must carry its algorithm: <c>algo:digest</c> or SRI <c>algo-base64</c>
    /// (Nix's <c>Hash::parseAnyPrefixed</c>).
    /// </summary>
    public static NixHash ParseAnyPrefixed(string text) => ParseAny(text, null);

    /// <summary>
    /// Parses <c>algo:digest</c>, SRI <c>algo-base64</c>, or an unprefixed digest of <paramref name="expected"/>
    /// (Nix's <c>Hash::parseAny</c>). When both a prefix and <paramref name="expected"/> are present they must agree.
    /// </summary>
    /// <exception cref="BadHashException">The text is not a hash Nix would accept.</exception>
    public static NixHash ParseAny(string text, NixHashAlgorithm? expected)
    {
        ArgumentNullException.ThrowIfNull(text);
        var rest = text.AsSpan();
        NixHashAlgorithm? prefixed = null;
        var isSri = false;
        var colon = rest.IndexOf(':');
        if (colon >= 0)
        {
            prefixed = NixHashAlgorithms.Parse(rest[..colon]);
            rest = rest[(colon + 1)..];
        }
        else
        {
            var dash = rest.IndexOf('-');
            if (dash >= 0)
            {
                prefixed = NixHashAlgorithms.Parse(rest[..dash]);
                rest = rest[(dash + 1)..];
                isSri = true;
            }
        }

        if (prefixed is null && expected is null)
        {
            throw new BadHashException($"hash '{text}' does not include a type, nor is the type otherwise known from context");
        }

        if (prefixed is { } p && expected is { } e && p != e)
        {
            throw new BadHashException($"hash '{text}' should have type '{e.Name()}'");
        }

        return ParseDigest(rest, prefixed ?? expected!.Value, isSri, text);
    }

    /// <summary>Parses an SRI hash <c>algo-base64</c> (Nix's <c>Hash::parseSRI</c>).</summary>
    public static NixHash ParseSri(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var dash = text.IndexOf('-', StringComparison.Ordinal);
        if (dash < 0)
        {
            throw new BadHashException($"hash '{text}' is not SRI");
        }

        return ParseDigest(text.AsSpan(dash + 1), NixHashAlgorithms.Parse(text.AsSpan(0, dash)), isSri: true, text);
    }

    /// <summary>Parses an unprefixed base16, Nix32 or base64 digest of a known algorithm (Nix's <c>parseNonSRIUnprefixed</c>).</summary>
    public static NixHash ParseUnprefixed(string text, NixHashAlgorithm algorithm)
    {
        ArgumentNullException.ThrowIfNull(text);
        return ParseDigest(text, algorithm, isSri: false, text);
    }

    private static NixHash ParseDigest(ReadOnlySpan<char> rest, NixHashAlgorithm algorithm, bool isSri, string original)
    {
        var size = algorithm.Size();
        Span<byte> digest = stackalloc byte[size];
        if (!isSri && rest.Length == size * 2)
        {
            for (var i = 0; i < size; i++)
            {
                var hi = HexValue(rest[2 * i]);
                var lo = HexValue(rest[(2 * i) + 1]);
                if (hi < 0 || lo < 0)
                {
                    throw new BadHashException($"invalid base-16 hash '{original}'");
                }

                digest[i] = (byte)((hi << 4) | lo);
            }
        }
        else if (!isSri && rest.Length == Nix32.EncodedLength(size))
        {
            if (!Nix32.TryDecode(rest, digest))
            {
                throw new BadHashException($"invalid base-32 hash '{original}'");
            }
        }
        else if (isSri || rest.Length == Base64Length(size))
        {
            // Nix's decoder: padding optional, so an unpadded SRI hash is accepted.
            if (!NixBase64.TryDecode(rest, out var decoded) || decoded.Length != size)
            {
                throw new BadHashException($"invalid {(isSri ? "SRI" : "base-64")} hash '{original}'");
            }

            decoded.CopyTo(digest);
        }
        else
        {
            throw new BadHashException($"hash '{original}' has wrong length for hash type '{algorithm.Name()}'");
        }

        return new NixHash(algorithm, digest);
    }

    private static int HexValue(char c) => c switch
    {
        >= '0' and <= '9' => c - '0',
        >= 'a' and <= 'f' => c - 'a' + 10,
        >= 'A' and <= 'F' => c - 'A' + 10,
        _ => -1,
    };

    private static int Base64Length(int size) => (size + 2) / 3 * 4;

    /// <summary>The digest in <paramref name="format"/>, with the <c>algo:</c> prefix when <paramref name="includeAlgorithm"/> (SRI always includes it).</summary>
    public string ToString(HashFormat format, bool includeAlgorithm)
    {
        var digest = format switch
        {
            HashFormat.Base16 => Convert.ToHexStringLower(_digest),
            HashFormat.Nix32 => Nix32.Encode(_digest),
            HashFormat.Base64 or HashFormat.Sri => Convert.ToBase64String(_digest),
            _ => throw new ArgumentOutOfRangeException(nameof(format)),
        };
        return format == HashFormat.Sri
            ? $"{Algorithm.Name()}-{digest}"
            : includeAlgorithm ? $"{Algorithm.Name()}:{digest}" : digest;
    }

    /// <summary>Lowercase hex without prefix.</summary>
    public string ToBase16() => ToString(HashFormat.Base16, false);

    /// <summary>Nix32 without prefix.</summary>
    public string ToNix32() => ToString(HashFormat.Nix32, false);

    /// <summary>Base64 without prefix.</summary>
    public string ToBase64() => ToString(HashFormat.Base64, false);

    /// <summary><c>algo-base64</c>.</summary>
    public string ToSri() => ToString(HashFormat.Sri, true);

    /// <summary><c>algo:nix32</c>, the form Nix uses in narinfo files and path info.</summary>
    public override string ToString() => _digest is null ? "" : ToString(HashFormat.Nix32, true);

    public bool Equals(NixHash other) =>
        Algorithm == other.Algorithm && Digest.SequenceEqual(other.Digest);

    public override bool Equals(object? obj) => obj is NixHash other && Equals(other);

    public override int GetHashCode()
    {
        var hash = new HashCode();
        hash.Add(Algorithm);
        hash.AddBytes(Digest);
        return hash.ToHashCode();
    }

    public static bool operator ==(NixHash left, NixHash right) => left.Equals(right);

    public static bool operator !=(NixHash left, NixHash right) => !left.Equals(right);
}
