using Kiln.Nix.Tests.Support;
using Kiln.Store.Metadata;

namespace Kiln.Cli.Tests;

/// <summary>
/// The native kiln on an installation whose metadata is in PostgreSQL (a data directory bound to it, as <c>kiln serve
/// --database</c> leaves it): it reaches the database itself, as the managed kiln does, with the same answers. A private
/// PostgreSQL cluster (<see cref="PostgresServer"/>); skipped without a published native kiln, as NativeKilnTests are.
/// </summary>
public sealed class NativeKilnPostgresTests(PostgresServer postgres) : IClassFixture<PostgresServer>
{
    [Fact]
    public void Accounts_keys_and_tokens_run_natively_against_PostgreSQL()
    {
        using var temp = new TempDir();
        // The native kiln alone (no kiln-managed beside it to hand anything to) adds, lists, creates and revokes.
        var native = NativeKilnTests.Alone(temp);
        var data = temp["data"];
        Directory.CreateDirectory(data);
        MetadataStores.Bind(data, postgres.CreateDatabase());
        var netrc = temp["netrc"];
        File.WriteAllText(netrc, "machine cache.example.org login ci password s3cret\n");

        var (key, fingerprint) = AccountCommandTests.NewKey(temp, "laptop");
        foreach (var args in new[]
        {
            new[] { "account", "create", "alice", "--data", data },
            ["account", "create", "bob", "--data", data],
            ["account", "set", "bob", "--public-cache", "--netrc-file", netrc, "--data", data],
            ["key", "add", "alice", key, "--permissions", "store:read", "--data", data],
            ["token", "create", "alice", "--permissions", "store:read", "--description", "ci", "--data", data],
            ["token", "create", "alice", "--data", data],
            ["token", "revoke", "alice", "1", "--data", data],
        })
        {
            var result = Processes.Run(native, args);
            Assert.True(result.ExitCode == 0, $"kiln {string.Join(' ', args)}: {result.Stderr}");
        }

        var listed = Processes.Run(native, ["key", "list", "alice", "--data", data, "--json"]);
        Assert.True(listed.ExitCode == 0, listed.Stderr);
        Assert.Contains($"\"fingerprint\":\"{fingerprint}\"", listed.StdoutText, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(data, "kiln.db")), "the native kiln opened a SQLite database beside the PostgreSQL one");

        // What the managed kiln reads from the same database, byte for byte; a failure the same too.
        NativeKilnTests.AssertSame("key", "list", "alice", "--data", data, "--json");
        NativeKilnTests.AssertSame("token", "list", "alice", "--data", data, "--json");
        NativeKilnTests.AssertSame("token", "list", "alice", "--data", data);
        NativeKilnTests.AssertSame("key", "list", "nobody", "--data", data);
        NativeKilnTests.AssertSame("account", "list", "--data", data, "--json");
        NativeKilnTests.AssertSame("account", "set", "bob", "--public-cache", "--data", data, "--json"); // credentials: true
        NativeKilnTests.AssertSame("account", "create", "bob", "--data", data);
    }
}
