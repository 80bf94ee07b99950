using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Accounts;

/// <summary>
/// Who is asking the account services: the operator (<c>kiln</c> on the server's machine, who may do anything to any
/// account) or a key logged in to an account (the SSH shell) or a token (the HTTP API), which acts on its own account only and
/// within its permissions.
/// </summary>
public sealed record Actor
{
    private Actor(long? accountId, string? accountName, KeyPermissions permissions, SshKeyRecord? key, TokenRecord? token)
    {
        AccountId = accountId;
        AccountName = accountName;
        Permissions = permissions;
        Key = key;
        Token = token;
    }

    /// <summary>The operator: every account, every permission, trusted to add keys without proof.</summary>
    public static Actor Operator { get; } = new(null, null, KeyPermissions.All, null, null);

    /// <summary>A key logged in to its account.</summary>
    public static Actor ForKey(SshKeyRecord key)
    {
        ArgumentNullException.ThrowIfNull(key);
        return new Actor(key.AccountId, key.AccountName, key.Permissions, key, null);
    }

    /// <summary>
    /// A token presented to the API, valid when the request was received (the API looks it up for every request, so
    /// a revoked token stops at the next one).
    /// </summary>
    public static Actor ForToken(TokenRecord token)
    {
        ArgumentNullException.ThrowIfNull(token);
        return new Actor(token.AccountId, token.AccountName, token.Permissions, null, token);
    }

    /// <summary>The account the actor is confined to; null for the operator.</summary>
    public long? AccountId { get; }

    /// <summary>That account's name; null for the operator.</summary>
    public string? AccountName { get; }

    public KeyPermissions Permissions { get; }

    /// <summary>The key acting, when it is a key.</summary>
    public SshKeyRecord? Key { get; }

    /// <summary>The token acting, when it is a token.</summary>
    public TokenRecord? Token { get; }

    public bool IsOperator => AccountId is null;
}
