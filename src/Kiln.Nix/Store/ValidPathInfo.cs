using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Store;

/// <summary>
/// What Nix knows about a valid store path (Nix's <c>ValidPathInfo</c>): the NAR's hash and size, its references
/// (which may include the path itself), the derivation that produced it, signatures, and its content address if it
/// has one. This is the record the worker and serve protocols and narinfo files carry.
/// </summary>
public sealed record ValidPathInfo
{
    public required StorePath Path { get; init; }

    public StorePath? Deriver { get; init; }

    /// <summary>SHA-256 of the NAR serialisation.</summary>
    public required NixHash NarHash { get; init; }

    public required long NarSize { get; init; }

    public IReadOnlySet<StorePath> References { get; init; } = new SortedSet<StorePath>();

    /// <summary>Registration time, Unix seconds.</summary>
    public long RegistrationTime { get; init; }

    /// <summary>Nix's "ultimate": built locally rather than copied (never trusted from untrusted clients).</summary>
    public bool Ultimate { get; init; }

    public IReadOnlySet<string> Signatures { get; init; } = new SortedSet<string>(StringComparer.Ordinal);

    public ContentAddress? ContentAddress { get; init; }

    /// <summary>Whether <see cref="Path"/> is among its own references.</summary>
    public bool HasSelfReference => References.Contains(Path);

    /// <summary>The references other than the path itself.</summary>
    public IEnumerable<StorePath> OtherReferences => References.Where(r => r != Path);

    /// <summary>
    /// Whether the path is what its content address says: the store path computed from the content address and
    /// references equals <see cref="Path"/> (Nix's <c>isContentAddressed</c>). The content hash itself is checked
    /// against the data when it arrives.
    /// </summary>
    public bool PathMatchesContentAddress()
    {
        if (ContentAddress is not { } ca)
        {
            return false;
        }

        try
        {
            var computed = ca.Method == ContentAddressMethod.Text
                ? StorePathComputer.MakeTextPath(Path.Name, ca.Hash, References)
                : StorePathComputer.MakeFixedOutputPath(Path.Name, ca, OtherReferences, HasSelfReference);
            return computed == Path;
        }
        catch (NixFormatException)
        {
            return false;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }
}
