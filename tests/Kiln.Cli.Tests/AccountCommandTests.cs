using System.Text.Json;
using Kiln.Nix.Tests.Support;

namespace Kiln.Cli.Tests;

/// <summary>kiln account, kiln key and kiln auth-keys on a data directory, with keys made by the real ssh-keygen.</summary>
public class AccountCommandTests
{
    /// <summary>A fresh key pair from ssh-keygen: (public key line, fingerprint as ssh-keygen -l prints it).</summary>
    internal static (string PublicKey, string Fingerprint) NewKey(TempDir temp, string name, string type = "ed25519")
    {
        var file = temp[name];
        Assert.Equal(0, Processes.Run("ssh-keygen", ["-q", "-t", type, "-N", "", "-C", $"{name}@test", "-f", file]).ExitCode);
        var fingerprint = Processes.Run("ssh-keygen", ["-l", "-E", "sha256", "-f", file + ".pub"]).StdoutText.Split(' ')[1];
        return (File.ReadAllText(file + ".pub").Trim(), fingerprint);
    }

    private static string[] AuthKeys(string data, string publicKey)
    {
        var parts = publicKey.Split(' ');
        return KilnCli.Ok("auth-keys", "--data", data, "--bridge", "/opt/kiln/kiln-bridge", "kiln", parts[0], parts[1]).StdoutText
            .Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    [Fact]
    public void An_account_is_deleted_only_when_its_name_is_typed_again_and_its_keys_and_tokens_go_with_it()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        KilnCli.Ok("account", "create", "alice", "--data", data);
        KilnCli.Ok("account", "create", "bob", "--data", data);
        var (alicePublic, _) = NewKey(temp, "alice");
        KilnCli.Ok("key", "add", "alice", alicePublic, "--data", data);
        KilnCli.Ok("token", "create", "alice", "--permissions", "store:read", "--data", data);
        Assert.NotEmpty(AuthKeys(data, alicePublic));

        // The wrong name (or none): nothing happens.
        foreach (var typed in new[] { "bob\n", "" })
        {
            var refused = KilnCli.Run(System.Text.Encoding.UTF8.GetBytes(typed), "account", "delete", "alice", "--data", data);
            Assert.Equal(1, refused.ExitCode);
            Assert.Contains("This deletes account alice: 1 SSH keys, 1 tokens, 0 paths", refused.Stderr, StringComparison.Ordinal);
            Assert.Contains("kiln: error: not deleted: the name typed was not 'alice'", refused.Stderr, StringComparison.Ordinal);
            Assert.Equal("alice\nbob\n", KilnCli.Ok("account", "list", "--data", data).StdoutText);
        }

        var deleted = KilnCli.Ok(System.Text.Encoding.UTF8.GetBytes("alice\n"), "account", "delete", "alice", "--data", data);
        Assert.Equal("deleted account alice\n", deleted.StdoutText);
        Assert.Matches(@"kiln: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ operator deleted account alice: 1 SSH keys, 1 tokens, 0 paths .*, 0 build records", deleted.Stderr);
        Assert.Equal("bob\n", KilnCli.Ok("account", "list", "--data", data).StdoutText);
        Assert.Empty(AuthKeys(data, alicePublic)); // the key logs in to nothing
        KilnCli.AssertOneLineError(KilnCli.Run("account", "delete", "alice", "--yes", "--data", data), "there is no account 'alice'");
        KilnCli.AssertOneLineError(KilnCli.Run("account", "delete", "(deleted)", "--yes", "--data", data), "is not an account name");

        // For scripts: --yes, and --json.
        using var json = JsonDocument.Parse(KilnCli.Ok("account", "delete", "bob", "--yes", "--json", "--data", data).StdoutText);
        Assert.Equal(("bob", 0), (json.RootElement.GetProperty("name").GetString(), json.RootElement.GetProperty("builds").GetInt32()));
        Assert.Equal("\n", KilnCli.Ok("account", "list", "--data", data).StdoutText); // (no accounts: deleted ones, nameless, are not listed)
    }

    [Fact]
    public void Usage_is_reported_per_account_and_its_options_are_checked()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        KilnCli.Ok("account", "create", "alice", "--data", data);
        var text = KilnCli.Ok("usage", "alice", "--data", data).StdoutText;
        Assert.StartsWith("storage now: 0 paths, 0 B of NAR", text, StringComparison.Ordinal);
        Assert.Contains("total: 0 builds started (0 succeeded)", text, StringComparison.Ordinal);
        using (var json = JsonDocument.Parse(KilnCli.Ok("usage", "alice", "--by", "month", "--json", "--data", data).StdoutText))
        {
            Assert.Equal("month", json.RootElement.GetProperty("by").GetString());
            Assert.Equal(0, json.RootElement.GetProperty("storage").GetProperty("paths").GetInt32());
        }

        KilnCli.AssertOneLineError(KilnCli.Run("usage", "alice", "--by", "week", "--data", data), "by is day or month");
        KilnCli.AssertOneLineError(KilnCli.Run("usage", "alice", "--since", "yesterday", "--data", data), "since is a date");
        KilnCli.AssertOneLineError(KilnCli.Run("usage", "carol", "--data", data), "there is no account 'carol'");
    }

    [Fact]
    public void Settings_are_set_shown_and_unset_per_account_and_key_and_bad_ones_are_refused()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        KilnCli.Ok("account", "create", "alice", "--data", data);
        KilnCli.Ok("account", "create", "bob", "--data", data);
        var (alicePublic, aliceFingerprint) = NewKey(temp, "alice");
        var (bobPublic, bobFingerprint) = NewKey(temp, "bob");
        KilnCli.Ok("key", "add", "alice", alicePublic, "--data", data);
        KilnCli.Ok("key", "add", "bob", bobPublic, "--data", data);

        Assert.Equal("alice: timeout = 1800 (final)\n", KilnCli.Ok("settings", "set", "alice", "timeout", "30m", "--final", "--data", data).StdoutText);
        KilnCli.Ok("settings", "set", "alice", "max-build-log-size", "64MiB", "--key", aliceFingerprint, "--data", data);
        Assert.Matches(@"^timeout\s+1800 s\s+account, final\nmax-silent-time\s+none\s+not set \(the server's holds\)\nmax-build-log-size\s+none\s+not set \(the server's holds\)\n",
            KilnCli.Ok("settings", "show", "alice", "--data", data).StdoutText);

        // The operator sets a quota; a key's quota is refused (it is the account's), and preferences show as default.
        Assert.Equal("alice: max-storage = 10737418240\n", KilnCli.Ok("settings", "set", "alice", "max-storage", "10GiB", "--data", data).StdoutText);
        KilnCli.AssertOneLineError(KilnCli.Run("settings", "set", "alice", "max-storage", "1GiB", "--key", aliceFingerprint, "--data", data), "quota of the whole account");
        var shown = KilnCli.Ok("settings", "show", "alice", "--data", data).StdoutText;
        Assert.Matches(@"\nmax-storage\s+10737418240 bytes\s+account\n", shown);
        Assert.Matches(@"\nmin-cpu\s+default\s+not set", shown);
        Assert.Contains("67108864 bytes   key", KilnCli.Ok("settings", "show", "alice", "--key", aliceFingerprint, "--data", data).StdoutText, StringComparison.Ordinal);
        using (var json = JsonDocument.Parse(KilnCli.Ok("settings", "show", "bob", "--json", "--data", data).StdoutText))
        {
            Assert.All(json.RootElement.EnumerateArray(), s => Assert.Equal("server", s.GetProperty("origin").GetString()));
        }

        KilnCli.AssertOneLineError(KilnCli.Run("settings", "set", "alice", "timeout", "soon", "--data", data), "is not a value of timeout");
        KilnCli.AssertOneLineError(KilnCli.Run("settings", "set", "alice", "max-fun", "1", "--data", data), "there is no setting 'max-fun'");
        KilnCli.AssertOneLineError(KilnCli.Run("settings", "set", "alice", "timeout", "1", "--key", bobFingerprint, "--data", data), "has no key");
        KilnCli.AssertOneLineError(KilnCli.Run("settings", "show", "alice", "--key", bobFingerprint, "--data", data), "has no key");
        Assert.Equal("alice: timeout unset\n", KilnCli.Ok("settings", "unset", "alice", "timeout", "--data", data).StdoutText);
        KilnCli.AssertOneLineError(KilnCli.Run("settings", "unset", "alice", "timeout", "--data", data), "timeout is not set there");
    }

    [Fact]
    public async Task Account_settings_print_as_typed_and_credentials_are_stored_sealed()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        KilnCli.Ok("account", "create", "alice", "--data", data);
        var netrc = temp["netrc"];
        File.WriteAllText(netrc, "machine c.example login ci password very-secret\n");
        const string Substituters = "https://c.example/?a=1&b=<2>+é";
        const string Key = "c.example-1:+/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

        // Byte for byte: JSON escaping is relaxed (ampersands, angle brackets, '+', '/' and non-ASCII as typed), which
        // the native kiln's documents built as nodes must keep as the serializer did.
        var set = KilnCli.Ok("account", "set", "alice", "--public-cache", "--substituters", Substituters, "--trusted-public-keys", Key,
            "--netrc-file", netrc, "--data", data, "--json");
        Assert.Equal($$"""{"name":"alice","publicCache":true,"substituters":"{{Substituters}}","trustedPublicKeys":"{{Key}}","credentials":true}""" + "\n",
            set.StdoutText);
        Assert.Equal("""[{"name":"alice","id":1}]""" + "\n", KilnCli.Ok("account", "list", "--data", data, "--json").StdoutText);

        // The credentials are in the database sealed, never as written (whichever kiln, native or managed, set them).
        var metadata = Kiln.Store.Metadata.MetadataStores.Open(Kiln.Store.Metadata.MetadataStores.ForDataDirectory(data));
        await using (metadata.ConfigureAwait(false))
        {
            var stored = (await metadata.GetUpstreamSettingsAsync(1, TestContext.Current.CancellationToken)).Netrc;
            Assert.StartsWith("kiln-sealed-v1:", stored, StringComparison.Ordinal);
            Assert.DoesNotContain("very-secret", stored, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Accounts_are_created_once_and_listed()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        Assert.Equal("created account alice\n", KilnCli.Ok("account", "create", "alice", "--data", data).StdoutText);
        using (var created = JsonDocument.Parse(KilnCli.Ok("account", "create", "bob", "--data", data, "--json").StdoutText))
        {
            Assert.Equal("bob", created.RootElement.GetProperty("name").GetString());
        }

        KilnCli.AssertOneLineError(KilnCli.Run("account", "create", "alice", "--data", data), "already exists");
        KilnCli.AssertOneLineError(KilnCli.Run("account", "create", "Alice/../x", "--data", data), "is not an account name");
        Assert.Equal("alice\nbob\n", KilnCli.Ok("account", "list", "--data", data).StdoutText);
        using var listed = JsonDocument.Parse(KilnCli.Ok("account", "list", "--data", data, "--json").StdoutText);
        Assert.Equal(["alice", "bob"], listed.RootElement.EnumerateArray().Select(a => a.GetProperty("name").GetString()));
    }

    [Fact]
    public void Keys_are_added_with_permissions_listed_by_ssh_keygens_fingerprint_and_removed()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        KilnCli.Ok("account", "create", "alice", "--data", data);
        KilnCli.Ok("account", "create", "bob", "--data", data);
        var (ed25519, ed25519Print) = NewKey(temp, "laptop");
        var (rsa, rsaPrint) = NewKey(temp, "ci", "rsa");

        var added = KilnCli.Ok("key", "add", "alice", ed25519, "--permissions", "store:read,build:write", "--data", data).StdoutText;
        Assert.Equal($"added {ed25519Print} ssh-ed25519 store:read,build:write laptop@test\n", added);
        using (var json = JsonDocument.Parse(KilnCli.Ok("key", "add", "alice", rsa, "--data", data, "--json").StdoutText))
        {
            Assert.Equal(rsaPrint, json.RootElement.GetProperty("fingerprint").GetString());
            Assert.Equal(["store:read", "store:write", "build:read", "build:write", "account:write"],
                json.RootElement.GetProperty("permissions").EnumerateArray().Select(p => p.GetString()));
        }

        // A key identifies one account.
        KilnCli.AssertOneLineError(KilnCli.Run("key", "add", "bob", ed25519, "--data", data), "already registered");
        KilnCli.AssertOneLineError(KilnCli.Run("key", "add", "alice", ed25519.Replace("ssh-ed25519", "ssh-rsa", StringComparison.Ordinal), "--data", data), "is not a ssh-rsa key");
        KilnCli.AssertOneLineError(KilnCli.Run("key", "add", "alice", "ssh-ed25519 not-base64!", "--data", data), "does not decode");
        KilnCli.AssertOneLineError(KilnCli.Run("key", "add", "alice", "from=\"10.0.0.1\" " + ed25519, "--data", data), "not an SSH key type");
        KilnCli.AssertOneLineError(KilnCli.Run("key", "add", "alice", ed25519, "--permissions", "store:delete", "--data", data), "unknown permission 'store:delete'");
        KilnCli.AssertOneLineError(KilnCli.Run("key", "add", "carol", ed25519, "--data", data), "there is no account 'carol'");

        var listed = KilnCli.Ok("key", "list", "alice", "--data", data).StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal([ed25519Print, rsaPrint], listed.Select(l => l.Split(' ')[0]));
        Assert.Equal("\n", KilnCli.Ok("key", "list", "bob", "--data", data).StdoutText);

        // Removed by fingerprint or by the key itself; only from its own account.
        KilnCli.AssertOneLineError(KilnCli.Run("key", "remove", "bob", ed25519Print, "--data", data), "has no key");
        KilnCli.Ok("key", "remove", "alice", ed25519Print, "--data", data);
        KilnCli.Ok("key", "remove", "alice", rsa, "--data", data);
        Assert.Equal("[]\n", KilnCli.Ok("key", "list", "alice", "--data", data, "--json").StdoutText);
    }

    [Fact]
    public void Auth_keys_forces_the_bridge_for_a_known_key_and_prints_nothing_for_any_other()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        var (known, _) = NewKey(temp, "known");
        var (stranger, _) = NewKey(temp, "stranger");

        // No database yet: nothing, and nothing created (sshd's lookups never write).
        Assert.Empty(AuthKeys(data, known));
        Assert.False(Directory.Exists(data));

        KilnCli.Ok("account", "create", "alice", "--data", data);
        var id = JsonDocument.Parse(KilnCli.Ok("key", "add", "alice", known, "--data", data, "--json").StdoutText);
        var line = Assert.Single(AuthKeys(data, known));
        var blob = known.Split(' ')[1];
        Assert.Matches($"^command=\"exec /opt/kiln/kiln-bridge [0-9]+\",restrict,pty ssh-ed25519 {System.Text.RegularExpressions.Regex.Escape(blob)}$", line);

        Assert.Empty(AuthKeys(data, stranger));
        Assert.Empty(KilnCli.Ok("auth-keys", "--data", data, "--bridge", "/b", "kiln", "ssh-ed25519", "AAAA%%%").StdoutText);
        Assert.Empty(KilnCli.Ok("auth-keys", "--data", data, "--bridge", "/b", "kiln", "ssh-dss", blob).StdoutText);

        KilnCli.Ok("key", "remove", "alice", known, "--data", data);
        Assert.Empty(AuthKeys(data, known));
    }
}
