using System.Text.Json;
using Kiln.Nix.Tests.Support;

namespace Kiln.Cli.Tests;

/// <summary>kiln builder add|list|remove on a data directory: what is kept, what is refused, what is never shown.</summary>
public class BuilderCommandTests
{
    private const string PrivateKey = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
    private const string HostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMl5pLqHsP0c3q8Y5Q0x5cC4wb2Ly7fQbq3n4z0m2Yh8";

    [Fact]
    public void Builders_are_added_listed_without_their_keys_and_removed()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        var key = Path.Combine(temp.Path, "builder_ed25519");
        File.WriteAllText(key, PrivateKey);

        var added = KilnCli.Ok("builder", "add", "mac", "ssh-ng://nix@mac.example:2222", "--system", "aarch64-darwin", "--system", "x86_64-darwin",
            "--features", "big-parallel, benchmark", "--max-jobs", "3", "--ssh-key", key, "--host-key", HostKey, "--data", data).StdoutText;
        Assert.Contains("added builder mac", added, StringComparison.Ordinal);
        // A host key may also come base64-encoded, as Nix's machines files have it.
        var encoded = Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(HostKey));
        KilnCli.Ok("builder", "add", "arm", "ssh-ng://arm.example", "--system", "aarch64-linux", "--ssh-key", key, "--host-key", encoded, "--data", data);

        using var listed = JsonDocument.Parse(KilnCli.Ok("builder", "list", "--json", "--data", data).StdoutText);
        var builders = listed.RootElement.EnumerateArray().ToList();
        Assert.Equal(["arm", "mac"], builders.Select(b => b.GetProperty("name").GetString()));
        var mac = builders[1];
        Assert.Equal("ssh-ng://nix@mac.example:2222", mac.GetProperty("uri").GetString());
        Assert.Equal(["aarch64-darwin", "x86_64-darwin"], mac.GetProperty("systems").EnumerateArray().Select(s => s.GetString()));
        Assert.Equal(["big-parallel", "benchmark"], mac.GetProperty("features").EnumerateArray().Select(s => s.GetString()));
        Assert.Equal(3, mac.GetProperty("maxJobs").GetInt32());
        Assert.Equal(HostKey, mac.GetProperty("hostKey").GetString());
        Assert.Equal(HostKey, builders[0].GetProperty("hostKey").GetString());
        var text = KilnCli.Ok("builder", "list", "--data", data).StdoutText;
        Assert.DoesNotContain("PRIVATE KEY", listed.RootElement.GetRawText() + text, StringComparison.Ordinal);
        Assert.DoesNotContain("b3BlbnNzaC1rZXktdjEAAAAA", listed.RootElement.GetRawText() + text, StringComparison.Ordinal);

        KilnCli.AssertOneLineError(KilnCli.Run("builder", "add", "mac", "ssh-ng://other", "--ssh-key", key, "--data", data), "exists already");
        KilnCli.Ok("builder", "remove", "mac", "--data", data);
        Assert.DoesNotContain("mac", KilnCli.Ok("builder", "list", "--data", data).StdoutText, StringComparison.Ordinal);
        KilnCli.AssertOneLineError(KilnCli.Run("builder", "remove", "mac", "--data", data), "no builder named");
    }

    [Fact]
    public void Bad_builders_are_refused_with_one_line_and_nothing_kept()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        var key = Path.Combine(temp.Path, "builder_ed25519");
        File.WriteAllText(key, PrivateKey);
        var publicKey = Path.Combine(temp.Path, "builder_ed25519.pub");
        File.WriteAllText(publicKey, HostKey + "\n");

        KilnCli.AssertOneLineError(KilnCli.Run("builder", "add", "old", "ssh://nix@host", "--ssh-key", key, "--data", data), "ssh-ng://");
        KilnCli.AssertOneLineError(KilnCli.Run("builder", "add", "web", "https://host", "--ssh-key", key, "--data", data), "not an ssh-ng:// address");
        KilnCli.AssertOneLineError(KilnCli.Run("builder", "add", "opt", "ssh-ng://-oProxyCommand=x", "--ssh-key", key, "--data", data), "no usable host");
        KilnCli.AssertOneLineError(KilnCli.Run("builder", "add", "port", "ssh-ng://host:99999", "--ssh-key", key, "--data", data), "not a port");
        KilnCli.AssertOneLineError(KilnCli.Run("builder", "add", "../escape", "ssh-ng://host", "--ssh-key", key, "--data", data), "name");
        KilnCli.AssertOneLineError(KilnCli.Run("builder", "add", "jobs", "ssh-ng://host", "--max-jobs", "0", "--ssh-key", key, "--data", data), "--max-jobs");
        KilnCli.AssertOneLineError(KilnCli.Run("builder", "add", "pub", "ssh-ng://host", "--ssh-key", publicKey, "--data", data), "private key");
        KilnCli.AssertOneLineError(KilnCli.Run("builder", "add", "hk", "ssh-ng://host", "--ssh-key", key, "--host-key", "not a key", "--data", data), "--host-key");
        Assert.Equal("", KilnCli.Ok("builder", "list", "--data", data).StdoutText.Trim());
    }
}
