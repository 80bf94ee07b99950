using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Metadata;

[assembly: AssemblyFixture(typeof(S3Server))]

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Two <c>kiln serve</c> front doors, each with its own data directory, on one PostgreSQL database and one S3 bucket
/// (s3rver): an account, key and token made through one work through the other; a closure pushed through A over HTTP
/// is pulled through B byte for byte; what A built over <c>ssh-ng://</c> is valid through B and copies from it; the
/// NARs are in the bucket, not in either data directory.
/// </summary>
public sealed class FrontDoorTests(PostgresServer postgres, S3Server s3)
{
    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task Two_front_doors_on_one_database_and_one_bucket_serve_the_same_store(string version)
    {
        var client = NixClient.For(version);
        postgres.Require();
        s3.Require();
        var database = postgres.CreateDatabase();
        var bucket = s3.NewLocation();
        string[] shared = ["--database", database, "--blobs", bucket, "--blob-cache-size", "64MiB"];
        using var a = new KilnProcess(ssh: true, http: true, arguments: shared);
        using var b = new KilnProcess(ssh: true, http: true, arguments: shared);
        using var workspace = client.NewWorkspace();

        // Account, key and token made through A's data directory; used through B.
        var alice = SshTests.NewLogin(client, a, "alice");
        var token = a.Cli("token", "create", "alice", "--permissions", "store:read,store:write").Split('\n')[0];
        File.WriteAllText(client.HostPath($"{workspace}/alice.netrc"), $"machine 127.0.0.1\nlogin alice\npassword {token}\n");
        string[] netrc = ["--option", "netrc-file", $"{workspace}/alice.netrc"];

        // Push through A over HTTP, pull through B over HTTP: the same bytes.
        var source = $"local?root={workspace}/source";
        var top = client.Ok(a, "nix-instantiate", "--store", source, "--read-write-mode", "--eval", "-E",
            $"builtins.toFile \"b\" \"${{builtins.toFile \"a\" \"{Guid.NewGuid():N}\"}}\"").StdoutText.Trim().Trim('"');
        client.Ok(a, ["nix", "copy", "--store", source, "--to", a.HttpUrl, .. netrc, top]);
        client.Ok(b, ["nix", "copy", "--from", b.HttpUrl, "--to", $"local?root={workspace}/pulled", "--no-check-sigs", .. netrc, top]);
        Assert.Equal(File.ReadAllBytes(client.HostPath($"{workspace}/source{top}")), File.ReadAllBytes(client.HostPath($"{workspace}/pulled{top}")));

        // Build through A over ssh-ng; B (its own host key pinned) sees the outputs and serves their NARs.
        var dag = Dag.Write(client, workspace, "doordag", depth: 2, width: 3, salt: Guid.NewGuid().ToString("N"));
        string[] evalStore = client.Is23 ? [] : ["--eval-store", "auto"];
        client.Ok(a, [.. alice.Environment, "nix", "build", .. evalStore, "--store", "ssh-ng://kiln@127.0.0.1", "-f", dag, "--no-link"]);
        string[] throughB = [.. SshTests.SshEnvironment(client, b, alice.KeyFile)];
        var outputs = client.Ok(b, [.. throughB, "nix", "path-info", .. evalStore, "--store", "ssh-ng://kiln@127.0.0.1", "-f", dag]).StdoutText
            .Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, outputs.Length); // the last layer's three derivations
        client.Ok(b, [.. throughB, "nix", "copy", "--no-check-sigs", "--from", "ssh-ng://kiln@127.0.0.1", "--to", $"local?root={workspace}/built", .. outputs]);
        Assert.Equal(6, client.Ok(b, ["nix", "path-info", "--store", $"local?root={workspace}/built", "-r", .. outputs]).StdoutText
            .Split('\n').Count(p => p.Contains("-dag-", StringComparison.Ordinal)));

        // Every build ran once, recorded in the one database; the NARs are in the bucket and in no data directory's blobs/.
        await using var metadata = MetadataStores.Open(database);
        var account = (await metadata.FindAccountAsync("alice", CancellationToken.None))!;
        Assert.Equal(6, (await metadata.ListBuildsAsync(account.Id, 100, CancellationToken.None)).Count);
        var pushed = (await metadata.GetPathsAsync(account.Id, [StorePath.Parse(top)], CancellationToken.None)).Values.Single();
        Assert.Contains(s3.ObjectFiles(bucket), f => f.Contains(pushed.Info.NarHash.ToNix32(), StringComparison.Ordinal));
        foreach (var door in new[] { a, b })
        {
            Assert.Empty(Directory.EnumerateFiles(Path.Combine(door.DataDirectory, "blobs"), "*.nar", SearchOption.AllDirectories));
        }
    }
}
