namespace Kiln.Store.Accounts;

/// <summary>What a key may do. A session gets exactly its key's permissions.</summary>
[Flags]
public enum KeyPermissions
{
    None = 0,

    /// <summary>Query and fetch paths in the account's view.</summary>
    StoreRead = 1,

    /// <summary>Upload paths (nix copy --to, AddToStore…).</summary>
    StoreWrite = 2,

    /// <summary>See builds and their logs.</summary>
    BuildRead = 4,

    /// <summary>Build.</summary>
    BuildWrite = 8,

    /// <summary>Manage the account's keys and settings.</summary>
    AccountWrite = 16,

    /// <summary>
    /// The operator's server-wide views (the farm: agents, slots, the whole queue, throughput) through the API and the
    /// dashboard. Not part of <see cref="All"/>: only the operator (<c>kiln token create ACCOUNT --permissions server:read</c>
    /// on the server) grants it, since no account holds it to pass on.
    /// </summary>
    ServerRead = 32,

    /// <summary>Everything an account's own key or token may do (not <see cref="ServerRead"/>).</summary>
    All = StoreRead | StoreWrite | BuildRead | BuildWrite | AccountWrite,
}

/// <summary>The textual form: <c>store:read,build:write</c> on the command line, space-separated in the database.</summary>
public static class KeyPermissionNames
{
    private static readonly (KeyPermissions Permission, string Name)[] Names =
    [
        (KeyPermissions.StoreRead, "store:read"),
        (KeyPermissions.StoreWrite, "store:write"),
        (KeyPermissions.BuildRead, "build:read"),
        (KeyPermissions.BuildWrite, "build:write"),
        (KeyPermissions.AccountWrite, "account:write"),
        (KeyPermissions.ServerRead, "server:read"),
    ];

    /// <summary>Parses names separated by commas or spaces.</summary>
    /// <exception cref="ArgumentException">A name is unknown, or none is given.</exception>
    public static KeyPermissions Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var result = KeyPermissions.None;
        foreach (var name in text.Split([',', ' '], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var match = Names.FirstOrDefault(n => n.Name == name);
            if (match.Name is null)
            {
                throw new ArgumentException($"unknown permission '{name}' (known: {string.Join(", ", Names.Select(n => n.Name))})");
            }

            result |= match.Permission;
        }

        return result == KeyPermissions.None ? throw new ArgumentException("a key needs at least one permission") : result;
    }

    public static IReadOnlyList<string> ToNames(KeyPermissions permissions) =>
        Names.Where(n => permissions.HasFlag(n.Permission)).Select(n => n.Name).ToList();

    public static string Format(KeyPermissions permissions, string separator = ",") => string.Join(separator, ToNames(permissions));
}
