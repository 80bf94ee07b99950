using Kiln.Accounts;
using Kiln.Protocol;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Http;

namespace Kiln.Api;

/// <summary>
/// Who is calling the API: the token presented (looked up for every request, so a revoked or expired one stops at the
/// next request), as the account services see it (<see cref="Actor"/>) and as the store does (<see cref="Caller"/>).
/// Made by the API's filter for every endpoint but the OpenAPI document; handlers take it from the request.
/// </summary>
public sealed class ApiCaller
{
    private static readonly object ItemKey = new();

    private readonly string _secret;

    internal ApiCaller(TokenRecord token, string secret)
    {
        Token = token;
        _secret = secret;
        Actor = Actor.ForToken(token);
        Caller = KilnStore.CallerForToken(token);
    }

    public TokenRecord Token { get; }

    public Actor Actor { get; }

    public Caller Caller { get; }

    public AccountRecord Account => AccountService.OwnAccount(Actor);

    /// <summary>Refuses the request unless the token carries <paramref name="permission"/>.</summary>
    /// <exception cref="KilnException">It does not (Forbidden).</exception>
    public void Need(KeyPermissions permission)
    {
        if (!Caller.Can(permission))
        {
            throw new KilnException(ErrorKind.Forbidden, $"this token lacks the {KeyPermissionNames.Format(permission)} permission");
        }
    }

    /// <summary>Whether the token is still valid (not revoked, not expired): what a long answer asks now and then.</summary>
    public async Task<bool> StillValidAsync(KilnStore store, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        return await store.FindValidTokenAsync(_secret, cancellationToken).ConfigureAwait(false) is { } now && now.Id == Token.Id;
    }

    /// <summary>The caller a token makes, if it is valid now (not revoked, not expired); what the dashboard's pages ask.</summary>
    public static async Task<ApiCaller?> FindAsync(KilnStore store, string? token, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        return token is { Length: > 0 } && await store.FindValidTokenAsync(token, cancellationToken).ConfigureAwait(false) is { } record
            ? new ApiCaller(record, token)
            : null;
    }

    /// <summary>
    /// Build <paramref name="id"/> if it was for the caller's account (the token needing <paramref name="permission"/>);
    /// otherwise not found, the same answer as for a build that never was.
    /// </summary>
    /// <exception cref="KilnException">The token lacks the permission (Forbidden), or the account has no such build (NotFound).</exception>
    public async Task<BuildRecord> VisibleBuildAsync(KilnStore store, long id, KeyPermissions permission, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(store);
        Need(permission);
        using var view = store.OpenView(Caller);
        return await view.GetBuildAsync(id, cancellationToken).ConfigureAwait(false)
            ?? throw new KilnException(ErrorKind.NotFound, $"the account has no build {id}");
    }

    /// <summary>Whether the token carries <paramref name="permission"/>.</summary>
    public bool Can(KeyPermissions permission) => Caller.Can(permission);

    internal static ApiCaller Of(HttpContext context) =>
        context.Items.TryGetValue(ItemKey, out var caller) && caller is ApiCaller known
            ? known
            : throw new InvalidOperationException("an API endpoint ran without the API's caller filter");

    internal void Attach(HttpContext context) => context.Items[ItemKey] = this;
}
