using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Metadata;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// <c>kiln store migrate</c> with stock Nix on both sides of it: an embedded installation (SQLite and a blob directory)
/// that built a DAG for an account with its own signing key, and holds a closure pushed with a token, is moved to a real
/// PostgreSQL and a real S3 server (s3rver); started again on the same data directory, it shows the same SSH host key,
/// takes the same SSH key and token, finds the DAG built (no build runs again), serves every path byte for byte as
/// before with the signatures the account's key made, and signs what it builds from then on with that same key.
/// </summary>
public sealed class MigrationTests(PostgresServer postgres, S3Server s3)
{
    private const string Kiln = "ssh-ng://kiln@127.0.0.1";

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task An_embedded_installation_moved_to_postgres_and_s3_serves_the_same_store(string version)
    {
        var client = NixClient.For(version);
        postgres.Require();
        s3.Require();
        using var workspace = client.NewWorkspace();
        string[] evalStore = client.Is23 ? [] : ["--eval-store", "auto"];
        using var kiln = new KilnProcess(ssh: true, http: true);
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var publicKey = kiln.Cli("signing-key", "create", "alice").Trim();
        var (_, netrc) = CacheAccess.Netrc(client, kiln, workspace, "alice");
        string[] aliceSignatures = ["--option", "trusted-public-keys", publicKey];

        // Before: a DAG built over ssh-ng (signed with alice's key), a closure pushed over HTTP, both pulled back.
        var dag = Dag.Write(client, workspace, "movedag", depth: 2, width: 3, salt: Guid.NewGuid().ToString("N"));
        client.Ok(kiln, [.. alice.Environment, "nix", "build", .. evalStore, "--store", Kiln, "-f", dag, "--no-link"]);
        var outputs = client.Ok(kiln, [.. alice.Environment, "nix", "path-info", .. evalStore, "--store", Kiln, "-f", dag]).StdoutText
            .Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, outputs.Length);
        var (source, top) = CacheAccess.SmallClosure(client, kiln, workspace);
        client.Ok(kiln, ["nix", "copy", "--store", source, "--to", kiln.HttpUrl, .. netrc, top]);
        client.Ok(kiln, ["nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/before", .. netrc, .. aliceSignatures, .. outputs]);
        client.Ok(kiln, ["nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/before", "--no-check-sigs", .. netrc, top]);
        var hostKey = kiln.KnownHostsLine.Split(' ', 2)[1];
        Assert.Equal(0, kiln.Stop());

        // The move, then the check of what arrived (every blob re-hashed, every path's closure present).
        var database = postgres.CreateDatabase();
        var bucket = s3.NewLocation();
        var moved = kiln.Cli("store", "migrate", "--to-database", database, "--to-blobs", bucket);
        Assert.Contains("now uses the new backends", moved, StringComparison.Ordinal);
        Assert.EndsWith(", 0 problems", kiln.Cli("store", "verify").Trim(), StringComparison.Ordinal);

        // After: the same data directory, on PostgreSQL and the bucket.
        using var again = new KilnProcess(ssh: true, http: true, dataDirectory: kiln.DataDirectory);
        Assert.Equal(hostKey, again.KnownHostsLine.Split(' ', 2)[1]); // StrictHostKeyChecking passes as before
        var throughAgain = SshTests.SshEnvironment(client, again, alice.KeyFile);
        client.Ok(again, [.. throughAgain, "nix", "build", .. evalStore, "--store", Kiln, "-f", dag, "--no-link"]);
        await using (var metadata = MetadataStores.Open(database))
        {
            var account = (await metadata.FindAccountAsync("alice", CancellationToken.None))!;
            Assert.Equal(6, (await metadata.ListBuildsAsync(account.Id, 100, CancellationToken.None)).Count); // none ran again
            var pushed = (await metadata.GetPathsAsync(account.Id, [StorePath.Parse(top)], CancellationToken.None)).Values.Single();
            Assert.Contains(s3.ObjectFiles(bucket), f => f.Contains(pushed.Info.NarHash.ToNix32(), StringComparison.Ordinal));

            // The server sampled every account's storage as it started (the usage report's storage over time).
            var today = StorageSample.DayOf(DateTimeOffset.UtcNow);
            var sample = Assert.Single(await metadata.GetStorageHistoryAsync(account.Id, today - 1, today + 1, CancellationToken.None));
            Assert.True(sample.Paths >= 4 && sample.NarBytes > 0, sample.ToString());
        }

        client.Ok(again, ["nix", "copy", "--from", again.HttpUrl, "--to", $"local?root={workspace}/after", .. netrc, .. aliceSignatures, .. outputs]);
        client.Ok(again, ["nix", "copy", "--from", again.HttpUrl, "--to", $"local?root={workspace}/after", "--no-check-sigs", .. netrc, top]);
        // Every path pulled, the closures' dependencies too: the same paths, byte for byte.
        var pulled = StorePaths(client.HostPath($"{workspace}/before/nix/store"));
        Assert.True(pulled.Count > outputs.Length + 1, string.Join(' ', pulled)); // the closures, not just their tops
        Assert.Equal(pulled, StorePaths(client.HostPath($"{workspace}/after/nix/store")));
        foreach (var name in pulled)
        {
            AssertSameTree(client.HostPath($"{workspace}/before/nix/store/{name}"), client.HostPath($"{workspace}/after/nix/store/{name}"));
        }

        // What is built after the move is signed with the key alice had before it.
        var fresh = Dag.Write(client, workspace, "freshdag", depth: 1, width: 1, salt: Guid.NewGuid().ToString("N"));
        client.Ok(again, [.. throughAgain, "nix", "build", .. evalStore, "--store", Kiln, "-f", fresh, "--no-link"]);
        var freshOut = client.Ok(again, [.. throughAgain, "nix", "path-info", .. evalStore, "--store", Kiln, "-f", fresh]).StdoutText.Trim();
        client.Ok(again, ["nix", "copy", "--from", again.HttpUrl, "--to", $"local?root={workspace}/fresh", .. netrc, .. aliceSignatures, freshOut]);
        Assert.Equal(0, again.Stop());
        Assert.DoesNotContain(postgres.Password, again.Log, StringComparison.Ordinal);
    }

    // The store paths in a client store's directory (not its own entries, such as .links), sorted.
    private static List<string> StorePaths(string storeDirectory) =>
        [.. Directory.EnumerateFileSystemEntries(storeDirectory).Select(p => Path.GetFileName(p)!)
            .Where(name => !name.StartsWith('.')).Order(StringComparer.Ordinal)];

    // A store path's contents as pulled into two client stores: the same files, links and bytes.
    private static void AssertSameTree(string expected, string actual)
    {
        if (new FileInfo(expected).LinkTarget is { } target)
        {
            Assert.Equal(target, new FileInfo(actual).LinkTarget); // a link is compared as a link, even to a directory
        }
        else if (Directory.Exists(expected))
        {
            var names = Directory.EnumerateFileSystemEntries(expected).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();
            Assert.Equal(names, Directory.EnumerateFileSystemEntries(actual).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList());
            foreach (var name in names)
            {
                AssertSameTree(Path.Combine(expected, name!), Path.Combine(actual, name!));
            }
        }
        else
        {
            Assert.Equal(File.ReadAllBytes(expected), File.ReadAllBytes(actual));
        }
    }
}
