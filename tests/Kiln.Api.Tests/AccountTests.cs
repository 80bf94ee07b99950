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
    public async Task Settings_change_in_part_and_credentials_are_never_shown_a_signing_key_is_made_and_shown()
    {
        var token = await TokenAsync("alice", KeyPermissions.AccountWrite);
        var changed = await SendAsync(HttpMethod.Patch, "/api/v1/settings", token,
            """{"substituters":"https://cache.example","netrc":"machine cache.example login ci password s3cr3t"}""");
        Assert.Equal(200, changed.Status);
        var settings = JsonDocument.Parse(changed.Body).RootElement;
        Assert.Equal(("https://cache.example", true, false), (settings.GetProperty("substituters").GetString(), settings.GetProperty("hasCredentials").GetBoolean(),
            settings.GetProperty("publicCache").GetBoolean()));
        var again = await SendAsync(HttpMethod.Patch, "/api/v1/settings", token, """{"publicCache":true}""");
        Assert.Contains("\"substituters\":\"https://cache.example\"", again.Body, StringComparison.Ordinal); // left as it was
        Assert.DoesNotContain("s3cr3t", again.Body + (await GetAsync("/api/v1/settings", token)).Body, StringComparison.Ordinal);
        Assert.Equal(400, (await SendAsync(HttpMethod.Patch, "/api/v1/settings", token, """{"trustedPublicKeys":"not-a-key"}""")).Status);

        Assert.Equal(404, (await GetAsync("/api/v1/signing-key", token)).Status);
        var made = await SendAsync(HttpMethod.Post, "/api/v1/signing-key", token, """{"name":"alice-ci-1"}""");
        Assert.Equal(201, made.Status);
        var publicKey = JsonDocument.Parse(made.Body).RootElement.GetProperty("publicKey").GetString()!;
        Assert.StartsWith("alice-ci-1:", publicKey, StringComparison.Ordinal);
        Assert.Contains(publicKey, (await GetAsync("/api/v1/signing-key", token)).Body, StringComparison.Ordinal);
        Assert.Equal(400, (await SendAsync(HttpMethod.Post, "/api/v1/signing-key", token, """{"name":"bad:name"}""")).Status);
    }
}
