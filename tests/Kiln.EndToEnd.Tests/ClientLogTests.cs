using Kiln.EndToEnd.Tests.Support;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Kiln's own lines in a stock Nix client's output, so a user never stares at a silent terminal: a build waiting for a
/// slot says so, and a second client asking for a running build is told it joined it.
/// </summary>
public class ClientLogTests
{
    private const string Socket = NixClient.SocketUri;

    public static TheoryData<string> Versions() => new("2.3.7", "2.34.8");

    [Theory]
    [MemberData(nameof(Versions))]
    public async Task A_build_waiting_for_a_slot_and_a_build_joined_by_a_second_client_say_so_in_nix_build_output(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess(arguments: ["--max-jobs", "1"]);
        using var workspace = client.NewWorkspace();
        var salt = Guid.NewGuid().ToString("N");
        Dag.WriteBusybox(client, workspace);
        File.WriteAllText(client.HostPath($"{workspace}/two.nix"), $$"""
            let bb = ./bb; mk = i: derivation {
              name = "slow-${toString i}"; system = "x86_64-linux"; builder = "${bb}/bin/sh"; PATH = "${bb}/bin";
              salt = "{{salt}}";
              args = [ "-c" "echo slow ${toString i}; sleep 3; echo ${toString i} > $out" ];
            }; in [ (mk 1) (mk 2) ]
            """);

        // One slot, two builds: the second waits for the first, and its log says so.
        var both = client.Ok(kiln, "nix-build", "--store", Socket, $"{workspace}/two.nix", "--no-out-link");
        Assert.Contains("kiln: waiting for a build slot for '/nix/store/", both.Stderr, StringComparison.Ordinal);
        Assert.Contains("': 1 of 1 busy", both.Stderr, StringComparison.Ordinal);

        // A second client asking for a build that is running joins it, and is told.
        var single = Dag.WriteSingle(client, workspace, $"joined-{salt[..8]}", $"echo {salt}; sleep 6; echo done > $out");
        var first = Task.Run(() => client.Run(kiln, "nix-build", "--store", Socket, single, "--no-out-link"));
        // Its build is recorded as it starts: then the second client asks.
        await using (var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db")))
        {
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (!(await metadata.ListBuildsAsync(null, 100, CancellationToken.None)).Any(b => b.DrvPath.Contains($"joined-{salt[..8]}", StringComparison.Ordinal)))
            {
                Assert.True(DateTime.UtcNow < deadline, "the first client's build never started");
                await Task.Delay(100, TestContext.Current.CancellationToken);
            }
        }

        var second = client.Ok(kiln, "nix-build", "--store", Socket, single, "--no-out-link");
        Assert.Equal(0, (await first).ExitCode);
        Assert.Matches($"kiln: joining a build of '/nix/store/[a-z0-9]{{32}}-joined-{salt[..8]}.drv' started [0-9]+ s ago", second.Stderr);
        Assert.Contains(salt, second.Stderr, StringComparison.Ordinal); // and the log so far
    }
}
