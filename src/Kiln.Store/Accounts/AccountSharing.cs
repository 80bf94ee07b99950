using Kiln.Protocol;

namespace Kiln.Store.Accounts;

/// <summary>
/// Sharing between accounts: <c>trusted-accounts</c> (the accounts whose builds and uploads an account takes as from a
/// trusted cache) and <c>share-with</c> (the accounts allowed to take paths from its store). A path moves from B's
/// view into A's only when both hold: A trusts B, and B shares with A. Trust alone never widens what A may read (B's
/// store may hold what B would not give away), and sharing alone never makes A take anything.
/// </summary>
public static class AccountSharing
{
    /// <summary>The setting naming the accounts an account trusts, first preferred.</summary>
    public const string TrustedAccounts = "trusted-accounts";

    /// <summary>The setting naming the accounts that may take paths from the account's store.</summary>
    public const string ShareWith = "share-with";

    /// <summary>The most accounts either setting names.</summary>
    public const int MaxAccounts = 32;

    /// <summary>
    /// The settings' kept form: account names separated by single spaces, each once, in the order given. Names are
    /// checked for their form only: whether such an account exists is not said (that would tell a tenant which
    /// accounts there are); a name nobody has matches nothing.
    /// </summary>
    /// <exception cref="KilnException">A word is not an account name, or there are too many (Invalid).</exception>
    public static string Canonical(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var names = new List<string>();
        // ("none" is what listings show for no accounts: never read as an account called so.)
        foreach (var word in text.Split([' ', '\t', '\n', ','], StringSplitOptions.RemoveEmptyEntries).Where(w => w != None))
        {
            try
            {
                if (!names.Contains(AccountName.Validate(word)))
                {
                    names.Add(word);
                }
            }
            catch (ArgumentException e)
            {
                throw new KilnException(ErrorKind.Invalid, e.Message);
            }
        }

        return names.Count <= MaxAccounts
            ? string.Join(' ', names)
            : throw new KilnException(ErrorKind.Invalid, $"at most {MaxAccounts} accounts");
    }

    /// <summary>The names in a kept value (words that are not names, in a row edited by hand, are left out).</summary>
    public static IReadOnlyList<string> NamesOf(string? value) =>
        [.. (value ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries).Where(w => w != None && AccountName.IsValid(w))];

    // What an empty value is shown as, and may be given as.
    private const string None = "none";
}
