using Kiln.EndToEnd.Tests.Support;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// trusted-accounts and share-with with stock Nix over SSH: Bob uploads a DAG's outputs he built himself (unsigned);
/// Alice, who trusts Bob, builds something on top of that DAG. Until Bob shares with her, Kiln would build the DAG for
/// her; once he does, Kiln takes his outputs into her store and builds only her part, and says so in her log.
/// </summary>
public sealed class AccountSharingTests
{
    private const string Store = "ssh-ng://kiln@127.0.0.1";

    [Theory]
    [InlineData("2.3.7")]
    [InlineData("2.34.8")]
    public async Task An_account_builds_on_the_uploads_of_an_account_it_trusts_once_that_account_shares_with_it(string version)
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For(version);
        using var workspace = client.NewWorkspace();
        using var kiln = new KilnProcess(ssh: true);
        const string Manage = "store:read,store:write,build:read,build:write,account:write";
        var alice = SshTests.NewLogin(client, kiln, "alice", Manage);
        var bob = SshTests.NewLogin(client, kiln, "bob", Manage);

        // Bob's DAG, built on his own machine and uploaded (unsigned: nothing vouches for it but Bob).
        var dag = Dag.Write(client, workspace, "shareddag", depth: 2, width: 3, salt: Guid.NewGuid().ToString("N"));
        var outputs = UpstreamTests.BuildOnHost(client, workspace, dag);
        client.Ok(kiln, [.. bob.Environment, "nix", "copy", "--from", $"local?root={workspace}/upstream", "--to", Store, .. outputs]);
        var consumer = UpstreamTests.WriteConsumer(client, workspace, dag);

        // Alice trusts Bob, but Bob shares with nobody: her dry run would build the whole DAG.
        Assert.Equal(0, SshTests.Shell(kiln, alice, null, "kiln", "settings", "set", "trusted-accounts", "bob").ExitCode);
        var alone = client.Ok(kiln, [.. alice.Environment, "nix-build", "--dry-run", "--store", Store, consumer]).Stderr;
        Assert.Contains("-dag-1-0.drv", alone, StringComparison.Ordinal);
        Assert.DoesNotContain("will be fetched", alone, StringComparison.Ordinal);

        // Bob shares with her: the DAG's outputs will be "fetched" (taken from his store), only her consumer built.
        Assert.Equal(0, SshTests.Shell(kiln, bob, null, "kiln", "settings", "set", "share-with", "alice").ExitCode);
        var shared = client.Ok(kiln, [.. alice.Environment, "nix-build", "--dry-run", "--store", Store, consumer]).Stderr;
        Assert.Contains("will be fetched", shared, StringComparison.Ordinal);
        Assert.DoesNotContain("-dag-1-0.drv", shared, StringComparison.Ordinal);

        var result = client.Ok(kiln, [.. alice.Environment, "nix-build", "--store", Store, consumer, "--no-out-link"]);
        Assert.Contains("from the store of account 'bob', which this account trusts, instead of building it", result.Stderr, StringComparison.Ordinal);
        // (Built from inputs only Alice trusts: Kiln's build key does not sign it, and Alice has no key of her own.)
        var built = result.StdoutText.Trim();
        client.Ok(kiln, [.. alice.Environment, "nix", "copy", "--no-check-sigs", "--from", Store, "--to", $"local?root={workspace}/got", built]);
        Assert.Equal(3, File.ReadAllLines(client.HostPath($"{workspace}/got{built}/ids")).Length);

        await using var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db"));
        var account = (await metadata.FindAccountAsync("alice", CancellationToken.None))!.Id;
        var builds = await metadata.ListBuildsAsync(account, 1000, CancellationToken.None);
        Assert.Single(builds);
        Assert.Contains("consumer-", builds[0].DrvPath, StringComparison.Ordinal);
        var records = await metadata.GetPathsAsync(account, outputs.Select(Kiln.Nix.StorePaths.StorePath.Parse).ToList(), CancellationToken.None);
        Assert.Equal(outputs.Length, records.Count);
        Assert.All(records.Values, r => Assert.Equal((Provenance.Shared, PathTrust.TrustedAccount), (r.Provenance, r.Trust)));
    }
}
