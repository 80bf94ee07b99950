using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Accounts;

/// <summary>
/// Who is asking the account services: the operator (<c>kiln</c> on the server's machine, who may do anything to any
/// account) or a key logged in to an account (the SSH shell, later the API), which acts on its own account only and
/// within its permissions.
/// </summary>
public sealed record Actor
{
    private Actor(long? accountId, KeyPermissions permissions, SshKeyRecord? key)
    {
        AccountId = accountId;
        Permissions = permissions;
        Key = key;
    }

    /// <summary>The operator: every account, every permission, trusted to add keys without proof.</summary>
    public static Actor Operator { get; } = new(null, KeyPermissions.All, null);

    /// <summary>A key logged in to its account.</summary>
    public static Actor ForKey(SshKeyRecord key)
    {
        ArgumentNullException.ThrowIfNull(key);
        return new Actor(key.AccountId, key.Permissions, key);
    }

    /// <summary>The account the actor is confined to; null for the operator.</summary>
    public long? AccountId { get; }

    public KeyPermissions Permissions { get; }

    /// <summary>The key acting, when it is a key.</summary>
    public SshKeyRecord? Key { get; }

    public bool IsOperator => AccountId is null;
}
