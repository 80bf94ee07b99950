using System.Globalization;
using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Signing;

/// <summary>A narinfo file that Nix would call corrupt.</summary>
public sealed class NarInfoFormatException(string message) : NixFormatException(message);

/// <summary>
/// A binary cache <c>.narinfo</c> (Nix's <c>src/libstore/nar-info.cc</c>): <c>Key: value</c> lines. Required:
/// <c>StorePath</c>, <c>URL</c>, <c>NarHash</c>, <c>NarSize</c> (&gt; 0). <c>Compression</c> defaults to <c>bzip2</c> when absent.
/// <c>References</c> and <c>Deriver</c> are base names. Unknown keys are ignored, as Nix ignores them.
/// <see cref="ToString"/> writes the keys in Nix's order.
/// </summary>
public sealed class NarInfo
{
    public required StorePath StorePath { get; init; }

    public required string Url { get; init; }

    public string Compression { get; init; } = "bzip2";

    public NixHash? FileHash { get; init; }

    public long? FileSize { get; init; }

    public required NixHash NarHash { get; init; }

    public required long NarSize { get; init; }

    public SortedSet<StorePath> References { get; init; } = [];

    public StorePath? Deriver { get; init; }

    public string? System { get; init; }

    /// <summary>Signatures, <c>name:base64</c>, sorted as Nix keeps them.</summary>
    public SortedSet<string> Signatures { get; init; } = new(StringComparer.Ordinal);

    public ContentAddress? ContentAddress { get; init; }

    /// <summary>Parses a narinfo document.</summary>
    /// <exception cref="NarInfoFormatException">It is corrupt.</exception>
    public static NarInfo Parse(string text, string whence = "narinfo")
    {
        ArgumentNullException.ThrowIfNull(text);
        StorePath? storePath = null;
        string? url = null;
        var compression = "";
        NixHash? fileHash = null;
        long? fileSize = null;
        NixHash? narHash = null;
        long narSize = 0;
        var references = new SortedSet<StorePath>();
        StorePath? deriver = null;
        string? system = null;
        var signatures = new SortedSet<string>(StringComparer.Ordinal);
        ContentAddress? ca = null;

        NarInfoFormatException Corrupt(string why) => new($"NAR info file '{whence}' is corrupt: {why}");

        var pos = 0;
        while (pos < text.Length)
        {
            var colon = text.IndexOf(':', pos);
            if (colon < 0)
            {
                throw Corrupt("a line has no ':'");
            }

            var eol = text.IndexOf('\n', colon);
            if (eol < 0)
            {
                throw Corrupt("the last line does not end in a newline");
            }

            var name = text[pos..colon];
            var value = eol >= colon + 2 && text[colon + 1] == ' ' ? text[(colon + 2)..eol] : text[(colon + 1)..eol].TrimStart();
            try
            {
                switch (name)
                {
                    case "StorePath":
                        storePath = StorePath.Parse(value);
                        break;
                    case "URL":
                        url = value;
                        break;
                    case "Compression":
                        compression = value;
                        break;
                    case "FileHash":
                        fileHash = NixHash.ParseAnyPrefixed(value);
                        break;
                    case "FileSize":
                        fileSize = ParseSize(value) ?? throw Corrupt($"bad FileSize '{value}'");
                        break;
                    case "NarHash":
                        narHash = NixHash.ParseAnyPrefixed(value);
                        break;
                    case "NarSize":
                        narSize = ParseSize(value) ?? throw Corrupt($"bad NarSize '{value}'");
                        break;
                    case "References":
                        // As Nix: a second References line is an error only when the first one listed something.
                        if (references.Count > 0)
                        {
                            throw Corrupt("References appears twice");
                        }

                        foreach (var reference in value.Split(' ', StringSplitOptions.RemoveEmptyEntries))
                        {
                            references.Add(StorePath.FromBaseName(reference));
                        }

                        break;
                    case "Deriver":
                        if (value != "unknown-deriver")
                        {
                            deriver = StorePath.FromBaseName(value);
                        }

                        break;
                    case "System":
                        system = value;
                        break;
                    case "Sig":
                        signatures.Add(value);
                        break;
                    case "CA":
                        if (ca is not null)
                        {
                            throw Corrupt("extra CA");
                        }

                        // An empty CA line means none, as Nix's parseContentAddressOpt has it.
                        ca = value.Length == 0 ? null : StorePaths.ContentAddress.Parse(value);
                        break;
                }
            }
            catch (NixFormatException e) when (e is not NarInfoFormatException)
            {
                throw Corrupt($"{name}: {e.Message}");
            }

            pos = eol + 1;
        }

        if (storePath is null || narHash is null || string.IsNullOrEmpty(url) || narSize == 0)
        {
            throw Corrupt("StorePath, URL, NarHash and a non-zero NarSize are required");
        }

        return new NarInfo
        {
            StorePath = storePath.Value,
            Url = url,
            Compression = compression.Length == 0 ? "bzip2" : compression,
            FileHash = fileHash,
            FileSize = fileSize,
            NarHash = narHash.Value,
            NarSize = narSize,
            References = references,
            Deriver = deriver,
            System = system,
            Signatures = signatures,
            ContentAddress = ca,
        };
    }

    private static long? ParseSize(string value) =>
        long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var size) ? size : null;

    /// <summary>
    /// The message a signature covers: <c>1;&lt;store path&gt;;&lt;sha256:nix32 NAR hash&gt;;&lt;NAR size&gt;;&lt;sorted full reference paths, comma-separated&gt;</c>
    /// (Nix's <c>ValidPathInfo::fingerprint</c>).
    /// </summary>
    public string Fingerprint() => ComputeFingerprint(StorePath, NarHash, NarSize, References);

    /// <inheritdoc cref="Fingerprint()"/>
    public static string ComputeFingerprint(StorePath path, NixHash narHash, long narSize, IEnumerable<StorePath> references)
    {
        ArgumentNullException.ThrowIfNull(references);
        if (narSize == 0)
        {
            throw new NixFormatException($"cannot calculate fingerprint of path '{path}' because its size is not known");
        }

        var refs = string.Join(",", references.Distinct().Order().Select(r => r.FullPath));
        return string.Create(CultureInfo.InvariantCulture, $"1;{path.FullPath};{narHash.ToString(HashFormat.Nix32, true)};{narSize};{refs}");
    }

    /// <summary>The narinfo of a path as a store holds it, its NAR at <paramref name="url"/> (compressed so, with that file hash and size).</summary>
    public static NarInfo Of(Store.ValidPathInfo info, string url, string compression, NixHash fileHash, long fileSize)
    {
        ArgumentNullException.ThrowIfNull(info);
        return new NarInfo
        {
            StorePath = info.Path,
            Url = url,
            Compression = compression,
            FileHash = fileHash,
            FileSize = fileSize,
            NarHash = info.NarHash,
            NarSize = info.NarSize,
            References = new SortedSet<StorePath>(info.References),
            Deriver = info.Deriver,
            Signatures = new SortedSet<string>(info.Signatures, StringComparer.Ordinal),
            ContentAddress = info.ContentAddress,
        };
    }

    /// <summary>The path info this narinfo declares (for a store to verify against the NAR it names).</summary>
    public Store.ValidPathInfo ToValidPathInfo() => new()
    {
        Path = StorePath,
        NarHash = NarHash,
        NarSize = NarSize,
        References = References,
        Deriver = Deriver,
        Signatures = Signatures,
        ContentAddress = ContentAddress,
    };

    /// <summary>A copy with a signature by <paramref name="key"/> added (replacing an earlier one by a key of the same name).</summary>
    public NarInfo WithSignature(SecretKey key)
    {
        ArgumentNullException.ThrowIfNull(key);
        var signatures = new SortedSet<string>(Signatures.Where(s => !s.StartsWith(key.Name + ":", StringComparison.Ordinal)), StringComparer.Ordinal)
        {
            key.Sign(Fingerprint()),
        };
        return new NarInfo
        {
            StorePath = StorePath,
            Url = Url,
            Compression = Compression,
            FileHash = FileHash,
            FileSize = FileSize,
            NarHash = NarHash,
            NarSize = NarSize,
            References = References,
            Deriver = Deriver,
            System = System,
            Signatures = signatures,
            ContentAddress = ContentAddress,
        };
    }

    /// <summary>Whether any signature is valid under one of <paramref name="keys"/>.</summary>
    public bool IsSignedByAny(IEnumerable<PublicKey> keys)
    {
        ArgumentNullException.ThrowIfNull(keys);
        var fingerprint = Encoding.UTF8.GetBytes(Fingerprint());
        return keys.Any(k => Signatures.Any(s => k.Verify(fingerprint, s)));
    }

    /// <summary>The narinfo text, keys in Nix's order.</summary>
    public override string ToString()
    {
        var s = new StringBuilder();
        s.Append("StorePath: ").Append(StorePath.FullPath).Append('\n');
        s.Append("URL: ").Append(Url).Append('\n');
        s.Append("Compression: ").Append(Compression).Append('\n');
        if (FileHash is { } fileHash)
        {
            s.Append("FileHash: ").Append(fileHash.ToString(HashFormat.Nix32, true)).Append('\n');
        }

        if (FileSize is { } fileSize)
        {
            s.Append("FileSize: ").Append(fileSize.ToString(CultureInfo.InvariantCulture)).Append('\n');
        }

        s.Append("NarHash: ").Append(NarHash.ToString(HashFormat.Nix32, true)).Append('\n');
        s.Append("NarSize: ").Append(NarSize.ToString(CultureInfo.InvariantCulture)).Append('\n');
        s.Append("References: ").Append(string.Join(" ", References.Select(r => r.BaseName))).Append('\n');
        if (Deriver is { } deriver)
        {
            s.Append("Deriver: ").Append(deriver.BaseName).Append('\n');
        }

        if (!string.IsNullOrEmpty(System))
        {
            s.Append("System: ").Append(System).Append('\n');
        }

        foreach (var signature in Signatures)
        {
            s.Append("Sig: ").Append(signature).Append('\n');
        }

        if (ContentAddress is { } ca)
        {
            s.Append("CA: ").Append(ca.ToString()).Append('\n');
        }

        return s.ToString();
    }
}
