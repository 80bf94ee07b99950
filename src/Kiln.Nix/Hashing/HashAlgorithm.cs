using System.Security.Cryptography;

namespace Kiln.Nix.Hashing;

/// <summary>The hash algorithms Nix names in hashes, content addresses and derivations.</summary>
public enum NixHashAlgorithm
{
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

/// <summary>Names and sizes of <see cref="NixHashAlgorithm"/> as Nix prints them.</summary>
public static class NixHashAlgorithms
{
    /// <summary>The name Nix prints (<c>md5</c>, <c>sha1</c>, <c>sha256</c>, <c>sha512</c>).</summary>
    public static string Name(this NixHashAlgorithm algorithm) => algorithm switch
    {
        NixHashAlgorithm.Md5 => "md5",
        NixHashAlgorithm.Sha1 => "sha1",
        NixHashAlgorithm.Sha256 => "sha256",
        NixHashAlgorithm.Sha512 => "sha512",
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm)),
    };

    /// <summary>The digest size in bytes.</summary>
    public static int Size(this NixHashAlgorithm algorithm) => algorithm switch
    {
        NixHashAlgorithm.Md5 => 16,
        NixHashAlgorithm.Sha1 => 20,
        NixHashAlgorithm.Sha256 => 32,
        NixHashAlgorithm.Sha512 => 64,
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm)),
    };

    internal static HashAlgorithmName DotNetName(this NixHashAlgorithm algorithm) => algorithm switch
    {
        NixHashAlgorithm.Md5 => HashAlgorithmName.MD5,
        NixHashAlgorithm.Sha1 => HashAlgorithmName.SHA1,
        NixHashAlgorithm.Sha256 => HashAlgorithmName.SHA256,
        NixHashAlgorithm.Sha512 => HashAlgorithmName.SHA512,
        _ => throw new ArgumentOutOfRangeException(nameof(algorithm)),
    };

    /// <summary>Parses an algorithm name; false for anything Nix does not know.</summary>
    public static bool TryParse(ReadOnlySpan<char> name, out NixHashAlgorithm algorithm)
    {
        switch (name)
        {
            case "md5": algorithm = NixHashAlgorithm.Md5; return true;
            case "sha1": algorithm = NixHashAlgorithm.Sha1; return true;
            case "sha256": algorithm = NixHashAlgorithm.Sha256; return true;
            case "sha512": algorithm = NixHashAlgorithm.Sha512; return true;
            default: algorithm = default; return false;
        }
    }

    /// <summary>Parses an algorithm name.</summary>
    /// <exception cref="BadHashException">Unknown name (Nix: "unknown hash algorithm").</exception>
    public static NixHashAlgorithm Parse(ReadOnlySpan<char> name) =>
        TryParse(name, out var algorithm)
            ? algorithm
            : throw new BadHashException($"unknown hash algorithm '{name}', expected 'md5', 'sha1', 'sha256', or 'sha512'");
}
