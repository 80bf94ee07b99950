using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Derivations;

/// <summary>What kind of output a derivation output tuple describes (Nix's <c>DerivationOutput</c> variants).</summary>
public enum DerivationOutputKind
{
    /// <summary>A path computed from the derivation's modulo hash: <c>(path, "", "")</c>.</summary>
    InputAddressed,

    /// <summary>A fixed-output path with a known hash: <c>(path, "r:sha256", hex)</c>.</summary>
    Fixed,

    /// <summary>A content-addressed output whose hash is known only after the build: <c>("", "r:sha256", "")</c>.</summary>
    Floating,

    /// <summary>An input-addressed output that depends on floating outputs: <c>("", "", "")</c>.</summary>
    Deferred,

    /// <summary>An impure output: <c>("", "r:sha256", "impure")</c>.</summary>
    Impure,
}

/// <summary>
/// One output tuple of a derivation exactly as written in the ATerm (<c>path</c>, <c>hashAlgo</c>, <c>hash</c>), so
/// printing it back is byte-identical. <see cref="Kind"/> interprets it as Nix does.
/// </summary>
public sealed record DerivationOutput(string Path, string HashAlgo, string Hash)
{
    /// <summary>An input-addressed output at <paramref name="path"/>.</summary>
    public static DerivationOutput InputAddressed(StorePath path) => new(path.FullPath, "", "");

    /// <summary>The output's kind.</summary>
    public DerivationOutputKind Kind => (HashAlgo, Hash, Path) switch
    {
        ("", _, "") => DerivationOutputKind.Deferred,
        ("", _, _) => DerivationOutputKind.InputAddressed,
        (_, "impure", _) => DerivationOutputKind.Impure,
        (_, "", _) => DerivationOutputKind.Floating,
        _ => DerivationOutputKind.Fixed,
    };

    /// <summary>The store path, when the tuple has one.</summary>
    public StorePath? StorePath => Path.Length == 0 ? null : StorePaths.StorePath.Parse(Path);

    /// <summary>For a fixed output: its method and hash.</summary>
    public ContentAddress FixedHash
    {
        get
        {
            if (Kind != DerivationOutputKind.Fixed)
            {
                throw new InvalidOperationException("not a fixed output");
            }

            var methodAndAlgorithm = ContentAddressMethodAndAlgorithm.ParseDerivationHashAlgo(HashAlgo);
            return new ContentAddress(methodAndAlgorithm.Method, NixHash.ParseUnprefixed(Hash, methodAndAlgorithm.Algorithm));
        }
    }
}

/// <summary>
/// A store derivation: the contents of a <c>.drv</c> file. Collections are kept in the order Nix keeps them
/// (outputs, input derivations, sources and environment sorted bytewise; arguments as given), so
/// <see cref="ATerm.Print(Derivation)"/> reproduces a Nix-written file byte for byte.
/// </summary>
public sealed class Derivation
{
    /// <summary>The derivation's name (the .drv file name without hash and <c>.drv</c>); not part of the ATerm.</summary>
    public required string Name { get; init; }

    /// <summary>Outputs by name.</summary>
    public SortedDictionary<string, DerivationOutput> Outputs { get; init; } = new(Utf8Order.Comparer);

    /// <summary>Input derivations and the outputs wanted from each.</summary>
    public SortedDictionary<StorePath, SortedSet<string>> InputDerivations { get; init; } = [];

    /// <summary>Input sources (and, in a BasicDerivation sent by a build hook, the whole input closure).</summary>
    public SortedSet<StorePath> InputSources { get; init; } = [];

    /// <summary>The system type, e.g. <c>x86_64-linux</c>.</summary>
    public required string Platform { get; init; }

    /// <summary>The builder program.</summary>
    public required string Builder { get; init; }

    /// <summary>Arguments to the builder.</summary>
    public List<string> Arguments { get; init; } = [];

    /// <summary>Environment variables.</summary>
    public SortedDictionary<string, string> Environment { get; init; } = new(Utf8Order.Comparer);

    /// <summary>Whether this is a fixed-output derivation (exactly one output, <c>out</c>, with a known hash).</summary>
    public bool IsFixedOutput =>
        Outputs.Count == 1 && Outputs.TryGetValue("out", out var output) && output.Kind == DerivationOutputKind.Fixed;

    /// <summary>Whether structured attributes are in use (the <c>__json</c> variable).</summary>
    public bool HasStructuredAttributes => Environment.ContainsKey("__json");

    /// <summary>Every store path the .drv file refers to: input derivations and sources (its references as a store object).</summary>
    public IEnumerable<StorePath> References => InputDerivations.Keys.Concat(InputSources);

    /// <summary>The name of a derivation from its .drv store path.</summary>
    public static string NameFromPath(StorePath drvPath)
    {
        if (!drvPath.IsDerivation)
        {
            throw new NixFormatException($"'{drvPath}' is not a derivation (its name does not end in .drv)");
        }

        return drvPath.Name[..^4];
    }
}

/// <summary>Orders strings as Nix's <c>std::string</c> maps do: by UTF-8 bytes, which is Unicode code point order.</summary>
public sealed class Utf8Order : IComparer<string>
{
    public static Utf8Order Comparer { get; } = new();

    public int Compare(string? x, string? y)
    {
        if (ReferenceEquals(x, y))
        {
            return 0;
        }

        if (x is null)
        {
            return -1;
        }

        if (y is null)
        {
            return 1;
        }

        var length = Math.Min(x.Length, y.Length);
        for (var i = 0; i < length; i++)
        {
            var a = x[i];
            var b = y[i];
            if (a != b)
            {
                // UTF-16 code units order code points correctly except that surrogates (U+D800–DFFF, used for
                // code points above U+FFFF) must sort after U+E000–U+FFFF.
                if (char.IsSurrogate(a) != char.IsSurrogate(b))
                {
                    return char.IsSurrogate(a) ? 1 : -1;
                }

                return a.CompareTo(b);
            }
        }

        return x.Length.CompareTo(y.Length);
    }
}
