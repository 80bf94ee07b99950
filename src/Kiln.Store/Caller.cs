using Kiln.Store.Accounts;

namespace Kiln.Store;

/// <summary>
/// Who is asking, as the store sees it: the account a session or request acts for (null: anonymous), what its key or
/// token permits, and the accounts whose paths it may read, in order of preference. Callers are made by
/// <see cref="KilnStore"/> alone (<c>CallerFor…</c>): which accounts a login, a token or an anonymous request may read
/// is decided there and nowhere else, and a <see cref="StoreView"/> opened for a caller answers from exactly those
/// accounts' views, for every protocol.
/// </summary>
public sealed record Caller
{
    internal Caller(long? accountId, string? accountName, KeyPermissions permissions, IReadOnlyList<long> readable)
    {
        AccountId = accountId;
        AccountName = accountName;
        Permissions = permissions;
        Readable = readable;
        ReadableKey = string.Join(',', readable);
    }

    /// <summary>The account this caller acts for (writes go there); null for an anonymous reader.</summary>
    public long? AccountId { get; }

    public string? AccountName { get; }

    public KeyPermissions Permissions { get; }

    /// <summary>The accounts whose views this caller reads, first preferred.</summary>
    public IReadOnlyList<long> Readable { get; }

    /// <summary>The readable accounts as one string (what answers cached per reader are kept under).</summary>
    public string ReadableKey { get; }

    public bool Can(KeyPermissions permission) => (Permissions & permission) == permission;
}
