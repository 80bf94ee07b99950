using Kiln.EndToEnd.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Pins against stock Nix's garbage collection: a path pinned by the operator (<c>kiln pin add</c>) or by its account
/// in the SSH shell survives <c>nix-store --gc</c> through Kiln, and goes at the first collection after its pin is
/// removed; another account's shell neither sees nor removes it.
/// </summary>
public sealed class PinTests
{
    private const string Store = "ssh-ng://kiln@127.0.0.1";

    [Fact]
    public void A_pinned_path_survives_stock_Nixs_garbage_collection_until_its_pin_is_removed()
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess(ssh: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var bob = SshTests.NewLogin(client, kiln, "bob");
        string Add(string name)
        {
            File.WriteAllText(client.HostPath($"{workspace}/{name}"), $"{name} {Guid.NewGuid():N}\n");
            return client.Ok(kiln, [.. alice.Environment, "nix-store", "--store", Store, "--add", $"{workspace}/{name}"]).StdoutText.Trim();
        }

        bool Valid(string path) => client.Run(kiln, [.. alice.Environment, "nix-store", "--store", Store, "--check-validity", path]).ExitCode == 0;
        void CollectGarbage() => client.Ok(kiln, [.. alice.Environment, "nix-store", "--store", Store, "--gc"]);

        var byOperator = Add("release.txt");
        var byShell = Add("nightly.txt");
        var loose = Add("loose.txt");
        Assert.Contains("pinned", kiln.Cli("pin", "add", "alice", byOperator, "--name", "release-1.0"), StringComparison.Ordinal);
        Assert.Contains("pinned", SshTests.Shell(kiln, alice, null, "kiln", "pin", "add", byShell).StdoutText, StringComparison.Ordinal);
        var listed = SshTests.Shell(kiln, alice, null, "kiln", "pin", "list").StdoutText;
        Assert.Contains($"release-1.0\t{byOperator}", listed, StringComparison.Ordinal);
        Assert.Contains($"nightly.txt\t{byShell}", listed, StringComparison.Ordinal);
        Assert.Equal(kiln.Cli("pin", "list", "alice").Trim(), listed.Trim());

        // Bob's shell sees none of them and removes none.
        Assert.Equal("", SshTests.Shell(kiln, bob, null, "kiln", "pin", "list").StdoutText.Trim());
        Assert.NotEqual(0, SshTests.Shell(kiln, bob, null, "kiln", "pin", "remove", "release-1.0").ExitCode);
        Assert.NotEqual(0, SshTests.Shell(kiln, bob, null, "kiln", "pin", "add", byOperator).ExitCode); // not in his store

        CollectGarbage();
        Assert.True(Valid(byOperator));
        Assert.True(Valid(byShell));
        Assert.False(Valid(loose));

        Assert.Contains("removed pin 'release-1.0'", SshTests.Shell(kiln, alice, null, "kiln", "pin", "remove", "release-1.0").StdoutText, StringComparison.Ordinal);
        kiln.Cli("pin", "remove", "alice", "nightly.txt");
        CollectGarbage();
        Assert.False(Valid(byOperator));
        Assert.False(Valid(byShell));
    }
}
