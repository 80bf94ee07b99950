using Kiln.Nix;
using Kiln.Nix.StorePaths;

namespace Kiln.Protocol.Worker;

/// <summary>
/// What a client asks to be made valid: a plain store path, or outputs of a derivation. On the wire
/// (Nix's <c>DerivedPath</c>, <c>StorePathWithOutputs</c> before 1.30): <c>/nix/store/…</c>, <c>/nix/store/…drv!out,dev</c>,
/// <c>/nix/store/…drv!*</c>; before 1.30 a bare <c>.drv</c> path meant all its outputs.
/// </summary>
public abstract record DerivedPath
{
    public static DerivedPath Parse(string text, ProtocolVersion version)
    {
        ArgumentNullException.ThrowIfNull(text);
        var bang = text.IndexOf('!', StringComparison.Ordinal);
        if (bang < 0)
        {
            var path = StorePath.Parse(text);
            return !version.AtLeast(30) && path.IsDerivation ? new Built(path, null) : new Opaque(path);
        }

        var drv = StorePath.Parse(text[..bang]);
        var outputs = text[(bang + 1)..];
        if (outputs == "*")
        {
            return new Built(drv, null);
        }

        var names = outputs.Split(',');
        if (names.Any(n => n.Length == 0))
        {
            throw new BadStorePathException($"invalid derived path '{text}': empty output name");
        }

        return new Built(drv, new SortedSet<string>(names, StringComparer.Ordinal));
    }

    public abstract string ToWire(ProtocolVersion version);

    /// <summary>A path wanted as it is.</summary>
    public sealed record Opaque(StorePath Path) : DerivedPath
    {
        public override string ToWire(ProtocolVersion version) => Path.FullPath;
    }

    /// <summary>Outputs of a derivation; <see cref="Outputs"/> null means all of them.</summary>
    public sealed record Built(StorePath DrvPath, IReadOnlySet<string>? Outputs) : DerivedPath
    {
        public override string ToWire(ProtocolVersion version) =>
            Outputs is null
                ? version.AtLeast(30) ? $"{DrvPath}!*" : DrvPath.FullPath
                : $"{DrvPath}!{string.Join(',', Outputs.Order(StringComparer.Ordinal))}";
    }
}
