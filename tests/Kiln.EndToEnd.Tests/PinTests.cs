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

    [Fact]
    public void The_server_collects_garbage_by_itself_at_its_interval_sparing_pins_and_gc_dry_run_says_what_would_go()
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For("2.34.8");
        using var data = new global::Kiln.Nix.Tests.Support.TempDir();
        using var workspace = client.NewWorkspace();
        string pinned, loose;
        using (var kiln = new KilnProcess(dataDirectory: data["data"]))
        {
            string Add(string name)
            {
                File.WriteAllText(client.HostPath($"{workspace}/{name}"), $"{name} {Guid.NewGuid():N}\n");
                return client.Ok(kiln, "nix-store", "--store", NixClient.SocketUri, "--add", $"{workspace}/{name}").StdoutText.Trim();
            }

            pinned = Add("pinned.txt");
            loose = Add("loose.txt");
            kiln.Cli("pin", "add", "local", pinned);
        }

        // With the server stopped, --dry-run names what a collection would take, and takes nothing.
        var dryRun = global::Kiln.Nix.Tests.Support.Processes.Run("dotnet", [KilnProcess.Dll, "store", "gc", "--dry-run", "--data", data["data"]]);
        Assert.True(dryRun.ExitCode == 0, dryRun.Stderr);
        Assert.Equal($"local\t{loose}", dryRun.StdoutText.Trim());
        Assert.Contains("no root, pin or session", dryRun.Stderr, StringComparison.Ordinal);

        // A server collecting every second takes the loose path by itself, and keeps the pinned one.
        using (var kiln = new KilnProcess(dataDirectory: data["data"], arguments: ["--gc-interval", "1", "--gc-keep-recent", "0"]))
        {
            Assert.True(kiln.WaitForLog("garbage collection (its interval came): 1 paths", TimeSpan.FromSeconds(30)), kiln.Log);
            client.Ok(kiln, "nix-store", "--store", NixClient.SocketUri, "--check-validity", pinned);
            Assert.NotEqual(0, client.Run(kiln, "nix-store", "--store", NixClient.SocketUri, "--check-validity", loose).ExitCode);
        }
    }
}
