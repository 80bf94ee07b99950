using System.Text.Json;
using Kiln.Nix.Signing;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Accounts;

namespace Kiln.Cli.Tests;

/// <summary>kiln token, kiln signing-key and kiln account set on a data directory.</summary>
public class CacheCommandTests
{
    [Fact]
    public async Task Tokens_are_shown_once_kept_as_hashes_listed_and_revoked()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        KilnCli.Ok("account", "create", "alice", "--data", data);
        using var created = JsonDocument.Parse(KilnCli.Ok("token", "create", "alice", "--permissions", "store:read,store:write", "--expires", "30d",
            "--description", "ci", "--data", data, "--json").StdoutText);
        var token = created.RootElement.GetProperty("token").GetString()!;
        Assert.True(AccessToken.LooksValid(token));
        var id = created.RootElement.GetProperty("details").GetProperty("id").GetInt64();

        // The database has the hash, never the token.
        Assert.DoesNotContain(token, File.ReadAllText(Path.Combine(data, "kiln.db")), StringComparison.Ordinal);
        await using (var metadata = new Kiln.Store.Metadata.Sqlite.SqliteMetadataStore(Path.Combine(data, "kiln.db"), readOnly: true))
        {
            var found = (await metadata.FindTokenAsync(AccessToken.Hash(token), default))!;
            Assert.Equal(("alice", KeyPermissions.StoreRead | KeyPermissions.StoreWrite), (found.AccountName, found.Permissions));
            Assert.InRange(found.Expires!.Value - DateTimeOffset.UtcNow.ToUnixTimeSeconds(), 30 * 86400 - 60, 30 * 86400);
        }

        var listed = KilnCli.Ok("token", "list", "alice", "--data", data).StdoutText;
        Assert.Contains("store:read,store:write", listed, StringComparison.Ordinal);
        Assert.DoesNotContain(token, listed, StringComparison.Ordinal);
        KilnCli.Ok("token", "revoke", "alice", id.ToString(System.Globalization.CultureInfo.InvariantCulture), "--data", data);
        Assert.Contains("(revoked)", KilnCli.Ok("token", "list", "alice", "--data", data).StdoutText, StringComparison.Ordinal);
        KilnCli.AssertOneLineError(KilnCli.Run("token", "revoke", "alice", id.ToString(System.Globalization.CultureInfo.InvariantCulture), "--data", data), "no token");
        KilnCli.AssertOneLineError(KilnCli.Run("token", "create", "alice", "--permissions", "build:sudo", "--data", data), "build:sudo");
        KilnCli.AssertOneLineError(KilnCli.Run("token", "create", "alice", "--expires", "yesterday", "--data", data), "expiry");
        KilnCli.AssertOneLineError(KilnCli.Run("token", "create", "nobody", "--data", data), "no account");
    }

    [Fact]
    public void A_signing_key_is_created_shown_and_replaced()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        KilnCli.Ok("account", "create", "alice", "--data", data);
        KilnCli.AssertOneLineError(KilnCli.Run("signing-key", "show", "alice", "--data", data), "no signing key");
        var first = KilnCli.Ok("signing-key", "create", "alice", "--name", "alice-cache-1", "--data", data).StdoutText.Trim();
        Assert.StartsWith("alice-cache-1:", first, StringComparison.Ordinal);
        PublicKey.Parse(first);
        Assert.Equal(first, KilnCli.Ok("signing-key", "show", "alice", "--data", data).StdoutText.Trim());
        var second = KilnCli.Ok("signing-key", "create", "alice", "--name", "alice-cache-2", "--data", data).StdoutText.Trim();
        Assert.NotEqual(first, second);
        Assert.Equal(second, KilnCli.Ok("signing-key", "show", "alice", "--data", data).StdoutText.Trim());
        KilnCli.AssertOneLineError(KilnCli.Run("signing-key", "create", "alice", "--name", "bad:name", "--data", data), "signing key's name");
    }

    [Fact]
    public void Account_settings_for_the_cache_and_upstreams()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        KilnCli.Ok("account", "create", "alice", "--data", data);
        var netrc = temp["netrc"];
        File.WriteAllText(netrc, "machine cache.example login me password secret\n");
        var key = "cache.example-1:" + Convert.ToBase64String(new byte[32]);
        using var set = JsonDocument.Parse(KilnCli.Ok("account", "set", "alice", "--public-cache", "--substituters", "https://cache.example",
            "--trusted-public-keys", key, "--netrc-file", netrc, "--data", data, "--json").StdoutText);
        Assert.True(set.RootElement.GetProperty("publicCache").GetBoolean());
        Assert.Equal("https://cache.example", set.RootElement.GetProperty("substituters").GetString());
        Assert.True(set.RootElement.GetProperty("credentials").GetBoolean());
        Assert.DoesNotContain("secret", set.RootElement.ToString(), StringComparison.Ordinal);
        Assert.Contains("private", KilnCli.Ok("account", "set", "alice", "--private-cache", "--data", data).StdoutText, StringComparison.Ordinal);
        KilnCli.AssertOneLineError(KilnCli.Run("account", "set", "alice", "--data", data), "nothing to set");
        KilnCli.AssertOneLineError(KilnCli.Run("account", "set", "alice", "--trusted-public-keys", "not-a-key", "--data", data));
    }
}
