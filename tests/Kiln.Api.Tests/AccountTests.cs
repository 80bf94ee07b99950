using System.Text.Json;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Accounts;

namespace Kiln.Api.Tests;

/// <summary>The account's keys, signing key and settings through the API, by the same rules as the shell.</summary>
public sealed class AccountTests : ApiFixture
{
    [Fact]
    public async Task A_key_is_added_once_its_holder_signs_the_message_and_removed_by_fingerprint()
    {
        var token = await TokenAsync("alice", KeyPermissions.AccountWrite | KeyPermissions.BuildRead);
        using var keys = new TempDir();
        Assert.Equal(0, Processes.Run("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "laptop", "-f", keys["key"]]).ExitCode);
        var publicKey = File.ReadAllText(keys["key"] + ".pub").Trim();
        var request = JsonSerializer.Serialize(new { key = publicKey, permissions = new[] { "build:read" } });

        var first = await SendAsync(HttpMethod.Post, "/api/v1/keys", token, request);
        Assert.Equal(400, first.Status);
        var message = JsonDocument.Parse(first.Body).RootElement.GetProperty("message").GetString()!;
        var signed = Processes.Run("ssh-keygen", ["-Y", "sign", "-n", "kiln", "-f", keys["key"]], System.Text.Encoding.UTF8.GetBytes(message));
        Assert.True(signed.ExitCode == 0, signed.Stderr);

        var wrong = await SendAsync(HttpMethod.Post, "/api/v1/keys", token,
            JsonSerializer.Serialize(new { key = publicKey, permissions = new[] { "build:read" }, proof = "-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n" }));
        Assert.Equal(403, wrong.Status);
        var more = await SendAsync(HttpMethod.Post, "/api/v1/keys", token,
            JsonSerializer.Serialize(new { key = publicKey, permissions = new[] { "store:write" }, proof = signed.StdoutText }));
        Assert.Equal(403, more.Status); // more than the token holds

        var added = await SendAsync(HttpMethod.Post, "/api/v1/keys", token,
            JsonSerializer.Serialize(new { key = publicKey, permissions = new[] { "build:read" }, proof = signed.StdoutText }));
        Assert.True(added.Status == 201, added.Body);
        var fingerprint = JsonDocument.Parse(added.Body).RootElement.GetProperty("fingerprint").GetString()!;
        Assert.Contains(fingerprint, (await GetAsync("/api/v1/keys", token)).Body, StringComparison.Ordinal);
        Assert.Equal(204, (await SendAsync(HttpMethod.Delete, $"/api/v1/keys?fingerprint={Uri.EscapeDataString(fingerprint)}", token)).Status);
        Assert.Equal("[]", (await GetAsync("/api/v1/keys", token)).Body);
        Assert.Equal(400, (await SendAsync(HttpMethod.Post, "/api/v1/keys", token, """{"key":"not a key"}""")).Status);
    }

    [Fact]
    public async Task Settings_are_shown_without_credentials_and_only_the_operator_changes_them_a_signing_key_is_made_and_shown()
    {
        var token = await TokenAsync("alice", KeyPermissions.AccountWrite);
        var alice = new Kiln.Store.Metadata.AccountRecord(await Store.Accounts.GetOrCreateAccountAsync("alice", default), "alice");
        await Accounts.ChangeSettingsAsync(Kiln.Accounts.Actor.Operator, alice,
            new Kiln.Accounts.SettingsChange(Substituters: "https://cache.example", Netrc: "machine cache.example login ci password s3cr3t"), default);
        var (status, body, _) = await GetAsync("/api/v1/settings", token);
        Assert.Equal(200, status);
        var settings = JsonDocument.Parse(body).RootElement;
        Assert.Equal(("https://cache.example", true, false), (settings.GetProperty("substituters").GetString(), settings.GetProperty("hasCredentials").GetBoolean(),
            settings.GetProperty("publicCache").GetBoolean()));
        Assert.DoesNotContain("s3cr3t", body, StringComparison.Ordinal);

        // A token (or a key) changing them would reach past its permissions: a public store, content from a cache of its
        // choosing, the netrc's credentials sent where it likes.
        var actor = Kiln.Accounts.Actor.ForToken((await Store.Accounts.ListTokensAsync(alice.Id, default))[0]);
        var refused = await Assert.ThrowsAsync<Kiln.Protocol.KilnException>(() => Accounts.ChangeSettingsAsync(actor, alice, new Kiln.Accounts.SettingsChange(PublicCache: true), default));
        Assert.Equal(Kiln.Protocol.ErrorKind.Forbidden, refused.Kind);
        Assert.Equal(404, (await SendAsync(HttpMethod.Patch, "/api/v1/settings", token, """{"publicCache":true}""")).Status);

        Assert.Equal(404, (await GetAsync("/api/v1/signing-key", token)).Status);
        var made = await SendAsync(HttpMethod.Post, "/api/v1/signing-key", token, """{"name":"alice-ci-1"}""");
        Assert.Equal(201, made.Status);
        var publicKey = JsonDocument.Parse(made.Body).RootElement.GetProperty("publicKey").GetString()!;
        Assert.StartsWith("alice-ci-1:", publicKey, StringComparison.Ordinal);
        Assert.Contains(publicKey, (await GetAsync("/api/v1/signing-key", token)).Body, StringComparison.Ordinal);
        Assert.Equal(400, (await SendAsync(HttpMethod.Post, "/api/v1/signing-key", token, """{"name":"bad:name"}""")).Status);
        Assert.Equal(400, (await SendAsync(HttpMethod.Post, "/api/v1/signing-key", token, """{"name":"esc\u001b[2Jname"}""")).Status);
    }

    [Fact]
    public async Task A_token_that_expires_leaves_no_lasting_credential_behind()
    {
        var expiring = await TokenAsync("alice", KeyPermissions.All, DateTimeOffset.UtcNow.AddHours(1));
        var key = await SendAsync(HttpMethod.Post, "/api/v1/keys", expiring,
            """{"key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHpBzbLmDqSDwAmDW4s1sMA95u3PzYLE3Ce8C1p8DZyY attacker"}""");
        Assert.Equal(403, key.Status);
        Assert.Contains("cannot add a login key", key.Body, StringComparison.Ordinal);
        Assert.Equal(403, (await SendAsync(HttpMethod.Post, "/api/v1/signing-key", expiring, "{}")).Status);
    }
}
