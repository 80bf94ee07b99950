using System.Net;
using System.Net.Http.Headers;
using Kiln.EndToEnd.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// <c>kiln account delete</c> on a running server, against stock Nix: the deleted account's key and token open
/// nothing at once; content another account holds stays whole for it; an account made later under the same name
/// starts empty — none of the old paths, builds or logs are linked to it.
/// </summary>
public sealed class AccountDeletionTests
{
    private const string Store = "ssh-ng://kiln@127.0.0.1";

    [Fact]
    public async Task A_deleted_account_opens_nothing_its_shared_content_stays_with_others_and_its_name_comes_back_empty()
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess(ssh: true, http: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var bob = SshTests.NewLogin(client, kiln, "bob");
        var aliceToken = kiln.Cli("token", "create", "alice", "--permissions", "store:read,build:read").Split('\n')[0];
        var salt = Guid.NewGuid().ToString("N");
        bool Valid(SshTests.Login login, string path) =>
            client.Run(kiln, [.. login.Environment, "nix-store", "--store", Store, "--check-validity", path]).ExitCode == 0;

        // Alice builds (her log says something of hers) and adds a file bob adds too (the same content).
        var drv = Dag.WriteSingle(client, workspace, "alices-build", $"echo alice-was-here-{salt}; mkdir $out");
        var output = client.Ok(kiln, [.. alice.Environment, "nix-build", "--store", Store, drv, "--no-out-link"]).StdoutText.Trim();
        File.WriteAllText(client.HostPath($"{workspace}/shared.txt"), $"shared {salt}\n");
        var shared = client.Ok(kiln, [.. alice.Environment, "nix-store", "--store", Store, "--add", $"{workspace}/shared.txt"]).StdoutText.Trim();
        Assert.Equal(shared, client.Ok(kiln, [.. bob.Environment, "nix-store", "--store", Store, "--add", $"{workspace}/shared.txt"]).StdoutText.Trim());
        Assert.True(Valid(alice, output));
        string id;
        using (var builds = System.Text.Json.JsonDocument.Parse(SshTests.Shell(kiln, alice, null, "kiln", "builds", "list", "--json").StdoutText))
        {
            id = builds.RootElement[0].GetProperty("id").GetInt64().ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        Assert.Contains($"alice-was-here-{salt}", SshTests.Shell(kiln, alice, null, "kiln", "builds", "log", id).StdoutText, StringComparison.Ordinal);

        var deleted = kiln.Cli("account", "delete", "alice", "--yes");
        Assert.Contains("deleted account alice", deleted, StringComparison.Ordinal);

        // Her key logs in to nothing, her token reads nothing — without restarting the server.
        var refused = client.Run(kiln, [.. alice.Environment, "nix-store", "--store", Store, "--check-validity", shared]);
        Assert.NotEqual(0, refused.ExitCode);
        using (var http = new HttpClient())
        using (var request = new HttpRequestMessage(HttpMethod.Get, $"{kiln.HttpUrl}/api/v1/builds"))
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", aliceToken);
            using var response = await http.SendAsync(request, TestContext.Current.CancellationToken);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        }

        // Bob's copy of the shared content is whole (its NAR re-hashed against his record).
        Assert.True(Valid(bob, shared));
        client.Ok(kiln, [.. bob.Environment, "nix-store", "--store", Store, "--verify-path", shared]);

        // An account made later under her name (with a new key) starts empty.
        var again = SshTests.NewLogin(client, kiln, "alice");
        Assert.False(Valid(again, output));
        Assert.False(Valid(again, shared));
        Assert.Equal("[]", SshTests.Shell(kiln, again, null, "kiln", "builds", "list", "--json").StdoutText.Trim());
        var log = SshTests.Shell(kiln, again, null, "kiln", "builds", "log", id);
        Assert.Equal(1, log.ExitCode);
        Assert.DoesNotContain($"alice-was-here-{salt}", log.StdoutText + log.Stderr, StringComparison.Ordinal);
    }
}
