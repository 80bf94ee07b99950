using Kiln.Nix.Hashing;

namespace Kiln.Nix.StorePaths;

/// <summary>How the bytes behind a content address were hashed.</summary>
public enum ContentAddressMethod
{
    /// <summary><c>text:</c> — the flat contents of a text file (.drv files, <c>builtins.toFile</c>); sha256 only; may have references.</summary>
    Text,

    /// <summary><c>fixed:</c> — the flat contents of a single regular file.</summary>
    Flat,

    /// <summary><c>fixed:r:</c> — the NAR serialisation ("recursive").</summary>
    Recursive,

    /// <summary><c>fixed:git:</c> — the git tree/blob hash (experimental in Nix).</summary>
    Git,
}

/// <summary>
/// A method together with its hash algorithm, e.g. the <c>camStr</c> of worker-protocol AddToStore
/// (<c>text:sha256</c>, <c>fixed:r:sha256</c>, <c>fixed:sha1</c>, <c>fixed:git:sha1</c>) or the <c>hashAlgo</c> field of a
/// derivation output (<c>r:sha256</c>, <c>sha256</c>, <c>text:sha256</c>, <c>git:sha1</c>).
/// See Nix's <c>src/libstore/content-address.cc</c>.
/// </summary>
public readonly record struct ContentAddressMethodAndAlgorithm(ContentAddressMethod Method, NixHashAlgorithm Algorithm)
{
    /// <summary>Parses the <c>camStr</c> form: <c>text:algo</c> or <c>fixed:[r:|git:]algo</c>.</summary>
    public static ContentAddressMethodAndAlgorithm ParseCamString(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var (method, rest) = ParsePrefix(text, requireTag: true);
        return new(method, NixHashAlgorithms.Parse(rest));
    }

    /// <summary>Parses a derivation output's <c>hashAlgo</c>: <c>[r:|git:|text:]algo</c>.</summary>
    public static ContentAddressMethodAndAlgorithm ParseDerivationHashAlgo(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        ContentAddressMethod method;
        string rest;
        if (text.StartsWith("r:", StringComparison.Ordinal))
        {
            (method, rest) = (ContentAddressMethod.Recursive, text[2..]);
        }
        else if (text.StartsWith("git:", StringComparison.Ordinal))
        {
            (method, rest) = (ContentAddressMethod.Git, text[4..]);
        }
        else if (text.StartsWith("text:", StringComparison.Ordinal))
        {
            (method, rest) = (ContentAddressMethod.Text, text[5..]);
        }
        else
        {
            (method, rest) = (ContentAddressMethod.Flat, text);
        }

        return new(method, NixHashAlgorithms.Parse(rest));
    }

    // Parses "text:" or "fixed:[r:|git:]" off the front of a content address or camStr.
    internal static (ContentAddressMethod Method, string Remainder) ParsePrefix(string text, bool requireTag)
    {
        if (text.StartsWith("text:", StringComparison.Ordinal))
        {
            return (ContentAddressMethod.Text, text[5..]);
        }

        if (!text.StartsWith("fixed:", StringComparison.Ordinal))
        {
            throw new NixFormatException(requireTag
                ? $"content address method '{text}' is not 'text:…' or 'fixed:…'"
                : $"content address '{text}' does not start with 'text:' or 'fixed:'");
        }

        var rest = text[6..];
        if (rest.StartsWith("r:", StringComparison.Ordinal))
        {
            return (ContentAddressMethod.Recursive, rest[2..]);
        }

        if (rest.StartsWith("git:", StringComparison.Ordinal))
        {
            return (ContentAddressMethod.Git, rest[4..]);
        }

        return (ContentAddressMethod.Flat, rest);
    }

    /// <summary>The <c>camStr</c> form, e.g. <c>fixed:r:sha256</c>.</summary>
    public string ToCamString() => $"{MethodPrefix(Method, forDerivation: false)}{Algorithm.Name()}";

    /// <summary>The derivation output <c>hashAlgo</c> form, e.g. <c>r:sha256</c>.</summary>
    public string ToDerivationHashAlgo() => $"{MethodPrefix(Method, forDerivation: true)}{Algorithm.Name()}";

    internal static string MethodPrefix(ContentAddressMethod method, bool forDerivation) => method switch
    {
        ContentAddressMethod.Text => "text:",
        ContentAddressMethod.Flat => forDerivation ? "" : "fixed:",
        ContentAddressMethod.Recursive => forDerivation ? "r:" : "fixed:r:",
        ContentAddressMethod.Git => forDerivation ? "git:" : "fixed:git:",
        _ => throw new ArgumentOutOfRangeException(nameof(method)),
    };

    public override string ToString() => ToCamString();
}

/// <summary>
/// A content address as Nix prints it in path info and narinfo <c>CA:</c> lines: <c>text:sha256:&lt;nix32&gt;</c>,
/// <c>fixed:&lt;algo&gt;:&lt;nix32&gt;</c>, <c>fixed:r:&lt;algo&gt;:&lt;nix32&gt;</c> or <c>fixed:git:&lt;algo&gt;:&lt;nix32&gt;</c>.
/// Parsing accepts any digest encoding Nix accepts.
/// </summary>
public readonly record struct ContentAddress(ContentAddressMethod Method, NixHash Hash)
{
    /// <summary>Parses a content address.</summary>
    /// <exception cref="NixFormatException">Malformed.</exception>
    public static ContentAddress Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var (method, rest) = ContentAddressMethodAndAlgorithm.ParsePrefix(text, requireTag: false);
        var colon = rest.IndexOf(':', StringComparison.Ordinal);
        if (colon < 0)
        {
            throw new NixFormatException($"content address '{text}' lacks a hash");
        }

        var algorithm = NixHashAlgorithms.Parse(rest.AsSpan(0, colon));
        if (method == ContentAddressMethod.Text && algorithm != NixHashAlgorithm.Sha256)
        {
            throw new NixFormatException($"text content address '{text}' must use sha256");
        }

        return new(method, NixHash.ParseUnprefixed(rest[(colon + 1)..], algorithm));
    }

    /// <summary>The method and algorithm.</summary>
    public ContentAddressMethodAndAlgorithm MethodAndAlgorithm => new(Method, Hash.Algorithm);

    /// <summary>e.g. <c>fixed:r:sha256:1b8m…</c>.</summary>
    public override string ToString() =>
        $"{ContentAddressMethodAndAlgorithm.MethodPrefix(Method, forDerivation: false)}{Hash.Algorithm.Name()}:{Hash.ToNix32()}";
}
