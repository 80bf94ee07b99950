using System.Text.Json;
using Kiln.EndToEnd.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// push-to against real caches and stock Nix: a build's outputs and closure land, signed with the account's key, in
/// an nginx WebDAV cache (PUT with the account's netrc credentials) and a file:// directory, from which stock Nix
/// copies them with only that key trusted; a target that cannot be reached is retried and never fails the build.
/// </summary>
public sealed class PushTests
{
    private const string Store = "ssh-ng://kiln@127.0.0.1";

    [Theory]
    [InlineData("2.3.7")]
    [InlineData("2.34.8")]
    public void A_builds_outputs_are_pushed_signed_to_the_accounts_caches_and_Nix_copies_them_from_there(string version)
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For(version);
        using var workspace = client.NewWorkspace();
        var pushed = client.HostPath($"{workspace}/pushed");
        Directory.CreateDirectory(pushed);
        var webdavRoot = Directory.CreateTempSubdirectory("kiln-webdav-").FullName;
        try
        {
            using var nginx = new Nginx(webdavRoot, webdavUser: "alice:pushing-secret");
            // (The caches are on loopback: the operator allows private targets here; the file root is the client's workspace.)
            using var kiln = new KilnProcess(ssh: true, arguments: ["--push-file-root", pushed, "--push-private-targets", "--push-retry", "1"]);
            var alice = SshTests.NewLogin(client, kiln, "alice", "store:read,store:write,build:read,build:write,account:write");
            var aliceKey = kiln.Cli("signing-key", "create", "alice", "--name", "alice-push-1").Trim();
            var netrc = Path.Combine(kiln.DataDirectory, "..", "alice.netrc");
            File.WriteAllText(netrc, "machine 127.0.0.1 login alice password pushing-secret\n");
            kiln.Cli("account", "set", "alice", "--netrc-file", netrc);
            // (Nix 2.3 reads no zstd: its users push xz, Nix's default.)
            var http = $"{nginx.Url}/cache?compression={(version.StartsWith("2.3.", StringComparison.Ordinal) ? "xz" : "zstd")}";
            var file = $"file://{pushed}/alice";
            const string Unreachable = "http://127.0.0.1:1/nothing-listens";
            Assert.Contains("push-to", kiln.Cli("settings", "set", "alice", "push-to", $"{http} {file} {Unreachable}"), StringComparison.Ordinal);
            Assert.Matches(@"push-to\s+http://127\.0\.0\.1:\d+/cache\?compression=\w+ file://", SshTests.Shell(kiln, alice, null, "kiln", "settings").StdoutText);

            // A two-layer DAG: the top outputs refer to the bottom ones, so the closure goes too.
            var dag = Dag.Write(client, workspace, "pushdag", depth: 2, width: 2, salt: Guid.NewGuid().ToString("N"));
            var built = client.Ok(kiln, [.. alice.Environment, "nix-build", "--store", Store, dag, "--no-out-link"]);
            var outputs = built.StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(2, outputs.Length);
            Assert.Contains("kiln: the outputs of this session's builds are pushed to the account's push-to caches (3)", built.Stderr, StringComparison.Ordinal);

            // Four builds, three targets each: the reachable ones are done soon, the unreachable one is retried.
            var pushes = WaitForPushes(kiln, alice, p => p.Count(x => x.State == "done") == 8 && p.Where(x => x.Target == Unreachable).All(x => x.Attempts >= 2));
            Assert.Equal(12, pushes.Count);
            Assert.All(pushes.Where(p => p.Target == Unreachable), p =>
            {
                Assert.Equal("queued", p.State);
                Assert.Contains("cannot reach", p.Error, StringComparison.Ordinal);
            });
            Assert.Equal(4, pushes.Where(p => p.Target == http).Sum(p => p.UploadedPaths)); // each path once, whichever push took it

            // Stock Nix copies the outputs (and their closure) from each cache, trusting only alice's key.
            // (The directory the server wrote is the client's workspace, seen from inside the client's root.)
            foreach (var (cache, name) in new[] { ($"{nginx.Url}/cache", "from-http"), ($"file://{workspace}/pushed/alice", "from-file") })
            {
                client.Ok(kiln, ["nix", "copy", "--from", cache, "--to", $"local?root={workspace}/{name}",
                    "--option", "require-sigs", "true", "--option", "trusted-public-keys", aliceKey, .. outputs]);
                Assert.All(outputs, o => Assert.True(Directory.Exists(client.HostPath($"{workspace}/{name}{o}")), $"{o} is not in {name}"));
                var stranger = "stranger-1:" + Convert.ToBase64String(new byte[32]);
                Assert.NotEqual(0, client.Run(kiln, ["nix", "copy", "--from", cache, "--to", $"local?root={workspace}/{name}-untrusted",
                    "--option", "require-sigs", "true", "--option", "trusted-public-keys", stranger, .. outputs]).ExitCode);
            }

            // The shell's builds show tells how each push of a build went.
            var top = pushes.First(p => p.Target == http).Build;
            var shown = SshTests.Shell(kiln, alice, null, "kiln", "builds", "show", top.ToString(System.Globalization.CultureInfo.InvariantCulture)).StdoutText;
            Assert.Contains($"push to {http}: done", shown, StringComparison.Ordinal);
            Assert.Contains($"push to {Unreachable}: queued, try", shown, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(webdavRoot, recursive: true);
        }
    }

    [Fact]
    public async Task A_builds_outputs_are_pushed_over_ssh_ng_to_a_stock_nix_daemon_with_the_accounts_push_key()
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For("2.34.8");
        using var workspace = client.NewWorkspace();
        using var daemon = new StockNixBuilder();
        using var kiln = new KilnProcess(ssh: true, arguments: ["--push-private-targets", "--push-retry", "1"]);
        var alice = SshTests.NewLogin(client, kiln, "alice", "store:read,store:write,build:read,build:write,account:write");
        var aliceKey = kiln.Cli("signing-key", "create", "alice", "--name", "alice-push-1").Trim();
        var hostKey = Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes(daemon.HostKeyLine));
        var target = $"{daemon.Uri}?base64-ssh-public-host-key={hostKey}";
        kiln.Cli("settings", "set", "alice", "push-to", target);

        // Before the daemon knows the account's push key, the push is refused (and says where the key comes from).
        var dag = Dag.Write(client, workspace, "sshdag", depth: 2, width: 2, salt: Guid.NewGuid().ToString("N"));
        var outputs = client.Ok(kiln, [.. alice.Environment, "nix-build", "--store", Store, dag, "--no-out-link"]).StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var refused = WaitForPushes(kiln, alice, p => p.All(x => x.Attempts >= 1 && x.Error.Length > 0));
        Assert.True(refused.All(p => p.Error.Contains("push-key", StringComparison.Ordinal)), kiln.Log);

        // The shell and the CLI give the same public key; once the daemon lets it in, the retries push everything.
        var pushKey = SshTests.Shell(kiln, alice, null, "kiln", "push-key").StdoutText.Trim();
        Assert.Equal(pushKey, kiln.Cli("account", "push-key", "alice").Trim());
        Assert.StartsWith("ssh-ed25519 ", pushKey, StringComparison.Ordinal);
        daemon.Authorize(pushKey);
        var pushes = WaitForPushes(kiln, alice, p => p.Count == 4 && p.All(x => x.State == "done"));
        Assert.All(pushes, p => Assert.Equal("done", p.State));
        Assert.Equal(4, pushes.Sum(p => p.UploadedPaths));
        foreach (var output in outputs)
        {
            var info = await daemon.PathInfoAsync(Kiln.Nix.StorePaths.StorePath.Parse(output));
            Assert.NotNull(info);
            var signed = new Kiln.Nix.Signing.NarInfo { StorePath = info.Path, Url = "x", NarHash = info.NarHash, NarSize = info.NarSize, References = new SortedSet<Kiln.Nix.StorePaths.StorePath>(info.References), Signatures = new SortedSet<string>(info.Signatures, StringComparer.Ordinal) };
            Assert.True(signed.IsSignedByAny([Kiln.Nix.Signing.PublicKey.Parse(aliceKey)]), $"{output} is not signed by alice's key on the daemon");
        }

        // A wrong host key: the push is refused, nothing is trusted on first use.
        var stranger = Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"));
        kiln.Cli("settings", "set", "alice", "push-to", $"{daemon.Uri}?base64-ssh-public-host-key={stranger}");
        var other = Dag.WriteSingle(client, workspace, "hostkey", $"echo {Guid.NewGuid():N}; mkdir $out");
        client.Ok(kiln, [.. alice.Environment, "nix-build", "--store", Store, other, "--no-out-link"]);
        var mismatch = WaitForPushes(kiln, alice, p => p.Count == 5 && p[0].Attempts >= 1 && p[0].Error.Length > 0)[0];
        Assert.Contains("cannot push", mismatch.Error, StringComparison.Ordinal);
    }

    private sealed record Push(long Build, string Target, string State, int Attempts, long UploadedPaths, string Error);

    // The account's pushes (the shell's `pushes --json`) once they are as wanted, or as they are after 90 s.
    private static List<Push> WaitForPushes(KilnProcess kiln, SshTests.Login login, Func<List<Push>, bool> wanted)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(90);
        while (true)
        {
            var json = SshTests.Shell(kiln, login, null, "kiln", "pushes", "--json").StdoutText;
            using var document = JsonDocument.Parse(json);
            var pushes = document.RootElement.EnumerateArray().Select(p => new Push(p.GetProperty("build").GetInt64(), p.GetProperty("target").GetString()!,
                p.GetProperty("state").GetString()!, p.GetProperty("attempts").GetInt32(), p.GetProperty("uploadedPaths").GetInt64(), p.GetProperty("error").GetString()!)).ToList();
            if (wanted(pushes) || DateTime.UtcNow > deadline)
            {
                return pushes;
            }

            Thread.Sleep(500);
        }
    }
}
