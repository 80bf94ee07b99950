namespace Kiln.Store.Metadata;

/// <summary>A derivation's package name, its name without the version, as Nix's <c>DrvName</c> splits it.</summary>
public static class PackageNames
{
    /// <summary>
    /// <c>hello</c> for <c>hello-2.12</c> (or its <c>.drv</c> base name <c>HASH-hello-2.12.drv</c>): the name ends at the
    /// first dash followed by something other than a letter, as in Nix; a name without one is all name.
    /// </summary>
    public static string Of(string drvPathOrName)
    {
        ArgumentNullException.ThrowIfNull(drvPathOrName);
        var name = drvPathOrName;
        var slash = name.LastIndexOf('/');
        if (slash >= 0)
        {
            name = name[(slash + 1)..];
        }

        if (name.EndsWith(".drv", StringComparison.Ordinal))
        {
            name = name[..^4];
            var dash = name.IndexOf('-', StringComparison.Ordinal);
            name = dash == 32 ? name[33..] : name; // the store path's hash part
        }

        for (var i = 0; i + 1 < name.Length; i++)
        {
            if (name[i] == '-' && !char.IsAsciiLetter(name[i + 1]))
            {
                return name[..i];
            }
        }

        return name;
    }
}
