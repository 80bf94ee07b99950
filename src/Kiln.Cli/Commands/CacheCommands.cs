using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Kiln.Accounts;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using static Kiln.Cli.Commands.AccountCommands;

namespace Kiln.Cli.Commands;

/// <summary>
/// <c>kiln token …</c> (HTTP access tokens) and <c>kiln signing-key …</c> (an account's own signing key). Like the
/// account commands they work on the data directory's database, with the server running or not.
/// </summary>
internal static class CacheCommands
{
    private static string Time(long? unixSeconds) =>
        unixSeconds is { } t ? DateTimeOffset.FromUnixTimeSeconds(t).ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture) : "never";

    private static JsonObject TokenJson(TokenRecord token) => new()
    {
        ["id"] = token.Id,
        ["account"] = token.AccountName,
        ["description"] = token.Description,
        ["permissions"] = JsonList(KeyPermissionNames.ToNames(token.Permissions), name => name),
        ["expires"] = token.Expires is null ? null : Time(token.Expires),
        ["revoked"] = token.Revoked is null ? null : Time(token.Revoked),
        ["created"] = Time(token.Created),
    };

    private static string TokenText(TokenRecord token) =>
        $"{token.Id} {KeyPermissionNames.Format(token.Permissions)} expires {Time(token.Expires)}{(token.Revoked is null ? "" : " (revoked)")}" +
        (token.Description.Length > 0 ? " " + token.Description : "");

    public static Command Token()
    {
        var createData = DataOption();
        var createJson = JsonOption();
        var createAccount = new Argument<string>("ACCOUNT");
        var permissions = new Option<string>("--permissions")
        {
            Description = "What the token may do, comma-separated: store:read, store:write (the binary cache), build:read, build:write, account:write (the API) (default: store:read).",
            DefaultValueFactory = _ => "store:read",
        };
        var expires = new Option<string>("--expires")
        {
            Description = "When it stops working: a duration (90d, 12h, 2w, 1y), a date (2027-01-31) or never (the default).",
            DefaultValueFactory = _ => "never",
        };
        var description = new Option<string>("--description") { Description = "What the token is for (shown by 'kiln token list').", DefaultValueFactory = _ => "" };
        var create = new Command("create", "Create an HTTP access token; it is printed once and only its hash is kept.")
        {
            createAccount, permissions, expires, description, createData, createJson,
        };
        create.SetAction(async (result, cancellationToken) =>
        {
            var granted = KeyPermissionNames.Parse(result.GetValue(permissions)!);
            var expiry = AccessToken.ParseExpiry(result.GetValue(expires)!, DateTimeOffset.UtcNow);
            var metadata = await OpenAsync(result.GetValue(createData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(createAccount)!, cancellationToken).ConfigureAwait(false);
                var (secret, token) = await Service(metadata).CreateTokenAsync(Actor.Operator, account, granted, expiry, result.GetValue(description)!, cancellationToken)
                    .ConfigureAwait(false);
                Print(result.GetValue(createJson), new JsonObject { ["token"] = secret, ["details"] = TokenJson(token) },
                    $"{secret}\n(token {token.Id} for {account.Name}: {KeyPermissionNames.Format(granted)}, expires {Time(token.Expires)}; it is not shown again)");
                return 0;
            }
        });

        var listData = DataOption();
        var listJson = JsonOption();
        var listAccount = new Argument<string>("ACCOUNT");
        var list = new Command("list", "List an account's tokens (never the tokens themselves).") { listAccount, listData, listJson };
        list.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(listData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(listAccount)!, cancellationToken).ConfigureAwait(false);
                var tokens = await Service(metadata).ListTokensAsync(Actor.Operator, account, cancellationToken).ConfigureAwait(false);
                Print(result.GetValue(listJson), JsonList(tokens, TokenJson), string.Join("\n", tokens.Select(TokenText)));
                return 0;
            }
        });

        var revokeData = DataOption();
        var revokeJson = JsonOption();
        var revokeAccount = new Argument<string>("ACCOUNT");
        var revokeId = new Argument<long>("ID") { Description = "The token's id (see 'kiln token list')." };
        var revoke = new Command("revoke", "Revoke a token: requests with it are refused from now on.") { revokeAccount, revokeId, revokeData, revokeJson };
        revoke.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(revokeData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(revokeAccount)!, cancellationToken).ConfigureAwait(false);
                var id = result.GetValue(revokeId);
                await Service(metadata).RevokeTokenAsync(Actor.Operator, account, id, cancellationToken).ConfigureAwait(false);

                Print(result.GetValue(revokeJson), new JsonObject { ["account"] = account.Name, ["id"] = id, ["revoked"] = true }, $"revoked token {id}");
                return 0;
            }
        });

        return new Command("token", "Manage HTTP access tokens (for the binary cache: netrc password or Bearer).") { create, list, revoke };
    }

    public static Command SigningKey()
    {
        var createData = DataOption();
        var createJson = JsonOption();
        var createAccount = new Argument<string>("ACCOUNT");
        var name = new Option<string>("--name") { Description = "The key's name, as it appears in signatures (default: HOST-ACCOUNT-1)." };
        var create = new Command("create", "Give an account its own signing key (replacing any it had); prints the public key.")
        {
            createAccount, name, createData, createJson,
        };
        create.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(createData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(createAccount)!, cancellationToken).ConfigureAwait(false);
                var publicKey = await Service(metadata).CreateSigningKeyAsync(Actor.Operator, account, result.GetValue(name), cancellationToken).ConfigureAwait(false);
                Print(result.GetValue(createJson), new { account = account.Name, publicKey = publicKey.ToString() }, publicKey.ToString());
                return 0;
            }
        });

        var showData = DataOption();
        var showJson = JsonOption();
        var showAccount = new Argument<string>("ACCOUNT");
        var show = new Command("show", "Print an account's public signing key (for trusted-public-keys).") { showAccount, showData, showJson };
        show.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(showData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(showAccount)!, cancellationToken).ConfigureAwait(false);
                var publicKey = (await Service(metadata).SigningKeyAsync(Actor.Operator, account, cancellationToken).ConfigureAwait(false)).ToString();
                Print(result.GetValue(showJson), new { account = account.Name, publicKey }, publicKey);
                return 0;
            }
        });

        return new Command("signing-key", "Manage an account's own signing key.") { create, show };
    }
}
