using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Metadata;

[assembly: AssemblyFixture(typeof(PostgresServer))]

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// <c>kiln serve --database postgres://…</c> on a real PostgreSQL (the run's private cluster): stock Nix logs in over
/// SSH with a key added by <c>kiln key add --data</c> (sshd's key lookup reaches the database through the data
/// directory's binding), builds as a remote store, pushes and pulls over HTTP with a token; every record is in
/// PostgreSQL, none in a kiln.db, and the password appears nowhere the operator's log shows.
/// </summary>
public sealed class PostgresTests(PostgresServer server)
{
    private const string Kiln = "ssh-ng://kiln@127.0.0.1";

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task Stock_nix_builds_pushes_and_pulls_through_a_server_on_postgresql(string version)
    {
        var client = NixClient.For(version);
        server.Require();
        var database = new Npgsql.NpgsqlConnectionStringBuilder(server.CreateDatabase());
        using var temp = new TempDir();
        File.WriteAllText(temp["password"], server.Password + "\n");
        var url = $"postgres://{PostgresServer.User}@127.0.0.1:{server.Port}/{database.Database}?password_file={temp["password"]}";
        using var kiln = new KilnProcess(ssh: true, http: true, arguments: ["--database", url]);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");

        var dag = Dag.Write(client, workspace, "pgdag", depth: 3, width: 4, salt: Guid.NewGuid().ToString("N"));
        string[] evalStore = client.Is23 ? [] : ["--eval-store", "auto"];
        client.Ok(kiln, [.. alice.Environment, "nix", "build", .. evalStore, "--store", Kiln, "-f", dag, "--no-link"]);

        await using var metadata = MetadataStores.Open(database.ConnectionString);
        var account = (await metadata.FindAccountAsync("alice", CancellationToken.None))!;
        var builds = await metadata.ListBuildsAsync(account.Id, 1000, CancellationToken.None);
        Assert.Equal(12, builds.Count);
        Assert.All(builds, b => Assert.True(b.Succeeded, b.Error));
        Assert.False(File.Exists(Path.Combine(kiln.DataDirectory, "kiln.db")), "the metadata went to SQLite, not PostgreSQL");

        // Push a closure over HTTP with a token, and pull the built outputs back over HTTP.
        var (_, netrc) = CacheAccess.Netrc(client, kiln, workspace, "alice");
        var (source, top) = CacheAccess.SmallClosure(client, kiln, workspace);
        client.Ok(kiln, ["nix", "copy", "--store", source, "--to", kiln.HttpUrl, .. netrc, top]);
        var pushed = (await metadata.GetPathsAsync(account.Id, [StorePath.Parse(top)], CancellationToken.None)).Values.Single();
        Assert.Single(pushed.Info.References);

        var built = "/nix/store/" + builds[0].Outputs[0].Path.BaseName;
        client.Ok(kiln, ["nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/pulled", "--no-check-sigs", .. netrc, top, built]);
        client.Ok(kiln, "nix", "path-info", "--store", $"local?root={workspace}/pulled", "-r", top, built);

        // Started again without --database, the data directory still reaches the same database.
        Assert.Equal(0, kiln.Stop());
        using (var again = new KilnProcess(ssh: true, dataDirectory: kiln.DataDirectory))
        {
            client.Ok(again, [.. SshTests.SshEnvironment(client, again, alice.KeyFile), "nix", "path-info", .. evalStore, "--store", Kiln, "-f", dag]);
            Assert.Equal(0, again.Stop());
            Assert.DoesNotContain(server.Password, again.Log, StringComparison.Ordinal);
        }

        Assert.DoesNotContain(server.Password, kiln.Log, StringComparison.Ordinal);
        Assert.Contains("metadata Host=127.0.0.1", kiln.Log, StringComparison.Ordinal);
    }
}
