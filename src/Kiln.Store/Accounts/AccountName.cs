using System.Text.RegularExpressions;

namespace Kiln.Store.Accounts;

/// <summary>Account names: short, lower-case, safe in paths, logs and URLs.</summary>
public static partial class AccountName
{
    /// <summary>
    /// What a deleted account is renamed to, before its id: <c>(deleted 17)</c>. Its row stays so that its id is never
    /// given to another account; no valid name starts so, so nobody can create, log in to or be confused with it.
    /// </summary>
    public const string DeletedPrefix = "(deleted";

    /// <summary>Whether <paramref name="name"/> is a deleted account's.</summary>
    public static bool IsDeleted(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return name.StartsWith(DeletedPrefix, StringComparison.Ordinal);
    }

    [GeneratedRegex("^[a-z0-9][a-z0-9_-]{0,62}$")]
    private static partial Regex Valid();

    /// <summary>Whether <paramref name="name"/> is an account name.</summary>
    public static bool IsValid(string name) => Valid().IsMatch(name ?? throw new ArgumentNullException(nameof(name)));

    /// <exception cref="ArgumentException">The name is not one.</exception>
    public static string Validate(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return IsValid(name)
            ? name
            : throw new ArgumentException($"'{(name.Length > 64 ? name[..64] + "…" : name)}' is not an account name (1–63 of a-z, 0-9, '_' and '-', starting with a letter or digit)");
    }
}
