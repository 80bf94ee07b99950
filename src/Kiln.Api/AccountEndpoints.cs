using Kiln.Accounts;
using Kiln.Protocol;
using Kiln.Store.Accounts;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Kiln.Api;

/// <summary>The caller's own account: keys, tokens, signing key, settings — by <see cref="AccountService"/>'s rules, as in the shell.</summary>
internal static class AccountEndpoints
{
    public static void Map(RouteGroupBuilder api, AccountService accounts)
    {
        api.MapGet("/keys", async (HttpContext context) =>
        {
            var caller = ApiCaller.Of(context);
            var keys = await accounts.ListKeysAsync(caller.Actor, caller.Account, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.Ok(keys.Select(KeyDocument.Of).ToList());
        }).WithSummary("The account's SSH login keys (needs account:write).").ProducesProblem(StatusCodes.Status403Forbidden);

        api.MapPost("/keys", async Task<IResult> (HttpContext context, KeyRequest request) =>
        {
            var caller = ApiCaller.Of(context);
            var key = Parse(() => SshPublicKey.Parse(request.Key ?? throw new FormatException("key is the key's OpenSSH line: 'ssh-ed25519 AAAA… comment'")));
            var permissions = Parse(() => request.Permissions is null ? KeyPermissions.All & caller.Token.Permissions : KeyPermissionNames.Parse(string.Join(',', request.Permissions)));
            var added = await accounts.AddKeyAsync(caller.Actor, caller.Account, key, permissions, request.Proof, context.RequestAborted).ConfigureAwait(false);
            if (added.Added is not { } record)
            {
                // Proof of possession first: nobody may register someone else's public key and take over their logins.
                return TypedResults.Problem(statusCode: StatusCodes.Status400BadRequest, type: "urn:kiln:problem:proof-required",
                    detail: $"prove that you hold this key: sign the message with it (ssh-keygen -Y sign -n {SshKeygenProofs.Namespace} -f KEY) and send the signature as proof",
                    extensions: new Dictionary<string, object?> { ["code"] = "proof-required", ["message"] = added.ProofMessage });
            }

            return TypedResults.Created($"{KilnApi.Prefix}/keys", KeyDocument.Of(record));
        }).WithSummary("Lets another SSH key log in to the account, once the caller proves it holds it (needs account:write; the first request answers with the message to sign).")
          .Produces<KeyDocument>(StatusCodes.Status201Created).ProducesProblem(StatusCodes.Status400BadRequest).ProducesProblem(StatusCodes.Status403Forbidden);

        api.MapDelete("/keys", async (HttpContext context, string fingerprint) =>
        {
            var caller = ApiCaller.Of(context);
            await accounts.RemoveKeyAsync(caller.Actor, caller.Account, fingerprint, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.NoContent();
        }).WithSummary("Stops a key logging in: ?fingerprint=SHA256:… (needs account:write, and at least the key's permissions).").ProducesProblem(StatusCodes.Status404NotFound);

        api.MapGet("/tokens", async (HttpContext context) =>
        {
            var caller = ApiCaller.Of(context);
            var tokens = await accounts.ListTokensAsync(caller.Actor, caller.Account, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.Ok(tokens.Select(TokenDocument.Of).ToList());
        }).WithSummary("The account's tokens, never their secrets (needs account:write).").ProducesProblem(StatusCodes.Status403Forbidden);

        api.MapPost("/tokens", async (HttpContext context, TokenRequest request) =>
        {
            var caller = ApiCaller.Of(context);
            var permissions = Parse(() => KeyPermissionNames.Parse(string.Join(',', request.Permissions ?? ["store:read"])));
            var expires = Parse(() => AccessToken.ParseExpiry(request.Expires ?? "never", DateTimeOffset.UtcNow));
            var (secret, token) = await accounts.CreateTokenAsync(caller.Actor, caller.Account, permissions, expires, request.Description ?? "", context.RequestAborted)
                .ConfigureAwait(false);
            return TypedResults.Created($"{KilnApi.Prefix}/tokens/{token.Id}", new NewTokenDocument(secret, TokenDocument.Of(token)));
        }).WithSummary("Makes a token with at most the caller's permissions; its secret is in this answer only (needs account:write).")
          .ProducesProblem(StatusCodes.Status400BadRequest).ProducesProblem(StatusCodes.Status403Forbidden);

        api.MapDelete("/tokens/{id:long}", async (HttpContext context, long id) =>
        {
            var caller = ApiCaller.Of(context);
            await accounts.RevokeTokenAsync(caller.Actor, caller.Account, id, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.NoContent();
        }).WithSummary("Revokes a token (needs account:write).").ProducesProblem(StatusCodes.Status404NotFound);

        api.MapGet("/signing-key", async (HttpContext context) =>
        {
            var caller = ApiCaller.Of(context);
            var key = await accounts.SigningKeyAsync(caller.Actor, caller.Account, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.Ok(new SigningKeyDocument(key.ToString()));
        }).WithSummary("The public half of the key the account's builds are signed with.").ProducesProblem(StatusCodes.Status404NotFound);

        api.MapPost("/signing-key", async (HttpContext context, SigningKeyRequest? request) =>
        {
            var caller = ApiCaller.Of(context);
            var key = await accounts.CreateSigningKeyAsync(caller.Actor, caller.Account, request?.Name, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.Created($"{KilnApi.Prefix}/signing-key", new SigningKeyDocument(key.ToString()));
        }).WithSummary("Gives the account a new signing key, replacing the one it had (needs account:write).").ProducesProblem(StatusCodes.Status400BadRequest);

        api.MapGet("/settings", async (HttpContext context) =>
        {
            var caller = ApiCaller.Of(context);
            var settings = await accounts.SettingsAsync(caller.Actor, caller.Account, context.RequestAborted).ConfigureAwait(false);
            return TypedResults.Ok(SettingsDocument.Of(settings));
        }).WithSummary("The account's settings (needs account:write).");
    }

    private static T Parse<T>(Func<T> parse)
    {
        try
        {
            return parse();
        }
        catch (Exception e) when (e is ArgumentException or FormatException)
        {
            throw new KilnException(ErrorKind.Invalid, e.Message);
        }
    }
}
