using System.Net;
using System.Net.Http.Headers;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.StorePaths;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Kiln's HTTP binary cache with real clients: what Kiln built, fetched with signatures checked (Kiln's build key,
/// or an account's own key); Kiln as a substituter for a local build; build logs; uploads with a netrc token; and
/// accounts that cannot read each other.
/// </summary>
public class HttpCacheTests
{
    private const string Socket = NixClient.SocketUri;

    // Builds a small DAG in the socket's account ("local") and returns its top outputs.
    private static string[] BuildInKiln(NixClient client, KilnProcess kiln, string workspace, string name)
    {
        var dag = Dag.Write(client, workspace, name, depth: 3, width: 2, salt: Guid.NewGuid().ToString("N"));
        return client.Ok(kiln, "nix-build", "--store", Socket, dag, "--no-out-link").StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    private static bool InClientStore(NixClient client, string workspace, string store, string path) =>
        Directory.Exists(client.HostPath($"{workspace}/{store}{path}")) || File.Exists(client.HostPath($"{workspace}/{store}{path}"));

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task What_Kiln_built_is_fetched_over_http_signed_by_Kiln_or_by_the_accounts_key_and_its_logs_are_there(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess(http: true);
        using var workspace = client.NewWorkspace();
        var accountKey = kiln.Cli("signing-key", "create", "local", "--name", "local-test-1").Trim();
        var outputs = BuildInKiln(client, kiln, workspace, "httpdag");
        Assert.Equal(2, outputs.Length);
        kiln.Cli("account", "set", "local", "--public-cache");
        var buildKey = File.ReadAllText(Path.Combine(kiln.DataDirectory, "keys", "build.public")).Trim();

        // With require-sigs, trusting Kiln's build key, and separately only the account's key.
        foreach (var (store, key) in new[] { ("by-build-key", buildKey), ("by-account-key", accountKey) })
        {
            client.Ok(kiln, ["nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/{store}",
                "--option", "require-sigs", "true", "--option", "trusted-public-keys", key, .. outputs]);
            Assert.All(outputs, o => Assert.True(InClientStore(client, workspace, store, o), $"{o} is not in {store}"));
        }

        // A key that signed nothing here: nothing is trusted.
        var stranger = "stranger-1:" + Convert.ToBase64String(new byte[32]);
        var refused = client.Run(kiln, ["nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/by-stranger",
            "--option", "require-sigs", "true", "--option", "trusted-public-keys", stranger, .. outputs]);
        Assert.NotEqual(0, refused.ExitCode);
        Assert.Contains("signature", refused.Stderr, StringComparison.OrdinalIgnoreCase);

        // As a substituter: the same DAG built locally with max-jobs 0 can only succeed by substituting from Kiln.
        var dagFile = $"{workspace}/httpdag.nix";
        client.Ok(kiln, "nix-build", "--store", $"local?root={workspace}/substituted", dagFile, "--no-out-link", "--max-jobs", "0",
            "--option", "substituters", kiln.HttpUrl, "--option", "trusted-public-keys", buildKey, "--option", "require-sigs", "true");
        Assert.All(outputs, o => Assert.True(InClientStore(client, workspace, "substituted", o)));

        // nix log reads the build log from the cache.
        await using var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db"));
        var build = (await metadata.ListBuildsAsync(null, 100, CancellationToken.None)).First(b => b.DrvPath.Contains("dag-2-1", StringComparison.Ordinal));
        var log = client.Ok(kiln, "nix", "log", "--store", kiln.HttpUrl, $"/nix/store/{build.DrvPath}");
        Assert.Contains("building layer 2 item 1", log.StdoutText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_narinfo_answer_changes_as_soon_as_its_path_is_signed_or_deleted()
    {
        // narinfo answers are kept in memory: signing or deleting through the worker protocol must show at once.
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess(http: true);
        using var workspace = client.NewWorkspace();
        var top = BuildInKiln(client, kiln, workspace, "keptdag")[0];
        kiln.Cli("account", "set", "local", "--public-cache");
        using var http = new HttpClient { BaseAddress = new Uri(kiln.HttpUrl) };
        var narInfo = $"/{StorePath.Parse(top).HashPart}.narinfo";
        Assert.Equal(await http.GetStringAsync(narInfo), await http.GetStringAsync(narInfo));
        Assert.DoesNotContain("Sig: later-1:", await http.GetStringAsync(narInfo), StringComparison.Ordinal);

        client.Ok(kiln, "nix-store", "--generate-binary-cache-key", "later-1", $"{workspace}/later.secret", $"{workspace}/later.public");
        client.Ok(kiln, "nix", "store", "sign", "--store", Socket, "--key-file", $"{workspace}/later.secret", top);
        Assert.Contains("Sig: later-1:", await http.GetStringAsync(narInfo), StringComparison.Ordinal);

        client.Ok(kiln, "nix", "store", "delete", "--store", Socket, top);
        using var gone = await http.GetAsync(narInfo);
        Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task Nix_copy_to_http_with_a_netrc_token_uploads_into_that_account_alone(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess(http: true);
        using var workspace = client.NewWorkspace();
        kiln.Cli("account", "create", "alice");
        kiln.Cli("account", "create", "bob");
        var alice = kiln.Cli("token", "create", "alice", "--permissions", "store:read,store:write").Split('\n')[0];
        var bob = kiln.Cli("token", "create", "bob", "--permissions", "store:read").Split('\n')[0];
        string Netrc(string name, string token)
        {
            File.WriteAllText(client.HostPath($"{workspace}/{name}.netrc"), $"machine 127.0.0.1\nlogin {name}\npassword {token}\n");
            return $"{workspace}/{name}.netrc";
        }

        // A two-path closure in the client's own store: b refers to a.
        var source = $"local?root={workspace}/source";
        var salt = Guid.NewGuid().ToString("N");
        var top = client.Ok(kiln, "nix-instantiate", "--store", source, "--read-write-mode", "--eval", "-E",
            $"builtins.toFile \"b\" \"${{builtins.toFile \"a\" \"{salt}\"}}\"").StdoutText.Trim().Trim('"');
        Assert.StartsWith("/nix/store/", top, StringComparison.Ordinal);

        client.Ok(kiln, "nix", "copy", "--store", source, "--to", kiln.HttpUrl, "--option", "netrc-file", Netrc("alice", alice), top);
        await using var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db"));
        var aliceId = (await metadata.FindAccountAsync("alice", CancellationToken.None))!.Id;
        var topPath = StorePath.Parse(top);
        var record = (await metadata.GetPathsAsync(aliceId, [topPath], CancellationToken.None))[topPath];
        Assert.Single(record.Info.References);

        // alice reads it back; bob (a valid token of another account) and the anonymous public see nothing.
        client.Ok(kiln, "nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/alice", "--no-check-sigs",
            "--option", "netrc-file", Netrc("alice", alice), top);
        Assert.True(InClientStore(client, workspace, "alice", top));
        var denied = client.Run(kiln, "nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/bob", "--no-check-sigs",
            "--option", "netrc-file", Netrc("bob", bob), top);
        Assert.NotEqual(0, denied.ExitCode);
        Assert.False(InClientStore(client, workspace, "bob", top));

        // A wrong token and a revoked one are refused outright.
        Assert.NotEqual(0, client.Run(kiln, "nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/wrong", "--no-check-sigs",
            "--option", "netrc-file", Netrc("wrong", "kiln_" + new string('0', 48)), top).ExitCode);
        kiln.Cli("token", "revoke", "alice", "1");
        var revoked = client.Run(kiln, "nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/revoked", "--no-check-sigs",
            "--option", "netrc-file", Netrc("alice", alice), top);
        Assert.NotEqual(0, revoked.ExitCode);
        Assert.False(InClientStore(client, workspace, "revoked", top));
    }

    [Fact]
    public async Task Requests_are_answered_by_view_and_bad_ones_get_4xx()
    {
        NixClient.RequireEndToEnd();
        using var kiln = new KilnProcess(http: true);
        kiln.Cli("account", "create", "alice");
        kiln.Cli("account", "create", "bob");
        var alice = kiln.Cli("token", "create", "alice", "--permissions", "store:read,store:write").Split('\n')[0];
        var reader = kiln.Cli("token", "create", "alice", "--permissions", "store:read").Split('\n')[0];
        var bob = kiln.Cli("token", "create", "bob", "--permissions", "store:read").Split('\n')[0];
        using var http = new HttpClient { BaseAddress = new Uri(kiln.HttpUrl) };

        HttpRequestMessage Request(HttpMethod method, string path, string? token, HttpContent? content = null)
        {
            var request = new HttpRequestMessage(method, path) { Content = content };
            if (token is not null)
            {
                request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            }

            return request;
        }

        async Task<HttpStatusCode> StatusAsync(HttpMethod method, string path, string? token, HttpContent? content = null)
        {
            using var response = await http.SendAsync(Request(method, path, token, content));
            return response.StatusCode;
        }

        // alice uploads a NAR and its narinfo as Nix's HTTP store does (uncompressed here).
        var nar = Kiln.Nix.Tests.Support.NarBuilder.Start().File("hello http\n").ToArray();
        var narHash = Kiln.Nix.Hashing.NixHash.Compute(Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, nar);
        var path = StorePath.FromHash(new byte[20], "hello-http");
        var narInfo = $"StorePath: {path}\nURL: nar/{narHash.ToNix32()}.nar\nCompression: none\nNarHash: {narHash}\nNarSize: {nar.Length}\nReferences: \n";
        Assert.Equal(HttpStatusCode.Unauthorized, await StatusAsync(HttpMethod.Put, $"/nar/{narHash.ToNix32()}.nar", null, new ByteArrayContent(nar)));
        Assert.Equal(HttpStatusCode.Forbidden, await StatusAsync(HttpMethod.Put, $"/nar/{narHash.ToNix32()}.nar", reader, new ByteArrayContent(nar)));
        Assert.Equal(HttpStatusCode.Conflict, await StatusAsync(HttpMethod.Put, $"/{path.HashPart}.narinfo", alice, new StringContent(narInfo)));
        Assert.Equal(HttpStatusCode.OK, await StatusAsync(HttpMethod.Put, $"/nar/{narHash.ToNix32()}.nar", alice, new ByteArrayContent(nar)));
        // A narinfo that lies about the NAR is refused, and nothing is registered.
        var lying = narInfo.Replace($"NarSize: {nar.Length}", $"NarSize: {nar.Length + 8}", StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.BadRequest, await StatusAsync(HttpMethod.Put, $"/{path.HashPart}.narinfo", alice, new StringContent(lying)));
        Assert.Equal(HttpStatusCode.NotFound, await StatusAsync(HttpMethod.Get, $"/{path.HashPart}.narinfo", alice));
        Assert.Equal(HttpStatusCode.OK, await StatusAsync(HttpMethod.Put, $"/{path.HashPart}.narinfo", alice, new StringContent(narInfo)));

        // Reads: alice's tokens see it; bob, anonymous and a wrong token do not (404, 404, 401).
        Assert.Equal(HttpStatusCode.OK, await StatusAsync(HttpMethod.Get, $"/{path.HashPart}.narinfo", reader));
        Assert.Equal(HttpStatusCode.OK, await StatusAsync(HttpMethod.Head, $"/{path.HashPart}.narinfo", reader));
        Assert.Equal(HttpStatusCode.NotFound, await StatusAsync(HttpMethod.Get, $"/{path.HashPart}.narinfo", bob));
        Assert.Equal(HttpStatusCode.NotFound, await StatusAsync(HttpMethod.Get, $"/{path.HashPart}.narinfo", null));
        Assert.Equal(HttpStatusCode.NotFound, await StatusAsync(HttpMethod.Get, $"/nar/{narHash.ToNix32()}.nar", bob));
        Assert.Equal(HttpStatusCode.Unauthorized, await StatusAsync(HttpMethod.Get, $"/{path.HashPart}.narinfo", "kiln_" + new string('1', 48)));
        Assert.Equal(HttpStatusCode.Unauthorized, await StatusAsync(HttpMethod.Get, $"/{path.HashPart}.narinfo", "not-a-token"));

        // The NAR itself, whole and in part.
        using (var whole = await http.SendAsync(Request(HttpMethod.Get, $"/nar/{narHash.ToNix32()}.nar", reader)))
        {
            Assert.Equal(nar, await whole.Content.ReadAsByteArrayAsync());
        }

        var partial = Request(HttpMethod.Get, $"/nar/{narHash.ToNix32()}.nar", reader);
        partial.Headers.Range = new RangeHeaderValue(8, 23);
        using (var part = await http.SendAsync(partial))
        {
            Assert.Equal(HttpStatusCode.PartialContent, part.StatusCode);
            Assert.Equal(nar[8..24], await part.Content.ReadAsByteArrayAsync());
        }

        // Made public, alice's view is readable without a token (within a second: the list is cached that long).
        kiln.Cli("account", "set", "alice", "--public-cache");
        await Task.Delay(1100);
        Assert.Equal(HttpStatusCode.OK, await StatusAsync(HttpMethod.Get, $"/{path.HashPart}.narinfo", null));

        // Malformed names are 4xx, never 5xx, and nothing outside NAR hashes reaches the blob directory.
        foreach (var bad in new[]
        {
            "/nar/../kiln.db", "/nar/%2e%2e%2fkiln.db", "/../kiln.db", "/blobs/x", "/nar/" + narHash.ToBase16() + ".nar", "/nar/",
            "/" + new string('e', 32) + ".narinfo", "/short.narinfo", "/%00.narinfo", "/log/../../etc/passwd", "/log/x.drv", "/x.ls",
        })
        {
            var status = await StatusAsync(HttpMethod.Get, bad, alice);
            Assert.True((int)status is >= 400 and < 500, $"{bad}: {status}");
        }

        foreach (var bad in new[] { "/nar/../../escape.nar", "/nar/x.nar", "/nar/" + narHash.ToNix32() + ".nar.exe", "/kiln.db" })
        {
            var status = await StatusAsync(HttpMethod.Put, bad, alice, new ByteArrayContent(nar));
            Assert.True((int)status is >= 400 and < 500, $"PUT {bad}: {status}");
        }

        Assert.Equal(HttpStatusCode.BadRequest, await StatusAsync(HttpMethod.Put, $"/{path.HashPart}.narinfo", alice, new StringContent("garbage")));
        Assert.Equal(HttpStatusCode.MethodNotAllowed, await StatusAsync(HttpMethod.Delete, $"/{path.HashPart}.narinfo", alice));
        Assert.DoesNotContain("Exception", kiln.Log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Uploads_are_bounded_per_account_while_they_wait_and_a_decompression_bomb_stops_at_its_declared_size()
    {
        NixClient.RequireEndToEnd();
        using var kiln = new KilnProcess(http: true, arguments: ["--http-staging-size", "1MiB"]);
        kiln.Cli("account", "create", "alice");
        kiln.Cli("account", "create", "bob");
        var alice = kiln.Cli("token", "create", "alice", "--permissions", "store:read,store:write").Split('\n')[0];
        var bob = kiln.Cli("token", "create", "bob", "--permissions", "store:read,store:write").Split('\n')[0];
        using var http = new HttpClient { BaseAddress = new Uri(kiln.HttpUrl) };

        async Task<(HttpStatusCode Status, string Body)> PutAsync(string path, string token, byte[] content)
        {
            using var request = new HttpRequestMessage(HttpMethod.Put, path) { Content = new ByteArrayContent(content) };
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            using var response = await http.SendAsync(request);
            return (response.StatusCode, await response.Content.ReadAsStringAsync());
        }

        (byte[] Nar, string File, string NarInfo) Upload(string name)
        {
            var contents = new byte[700_000];
            Random.Shared.NextBytes(contents);
            var nar = Kiln.Nix.Tests.Support.NarBuilder.Start().Tokens("(", "type", "regular", "contents").Raw(contents).Tokens(")").ToArray();
            var narHash = Kiln.Nix.Hashing.NixHash.Compute(Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, nar);
            var path = StorePath.FromHash(System.Security.Cryptography.RandomNumberGenerator.GetBytes(20), name);
            return (nar, $"/nar/{narHash.ToNix32()}.nar",
                $"StorePath: {path}\nURL: nar/{narHash.ToNix32()}.nar\nCompression: none\nNarHash: {narHash}\nNarSize: {nar.Length}\nReferences: \n");
        }

        string NarInfoPath(string narInfo) => $"/{StorePath.Parse(narInfo.Split('\n')[0]["StorePath: ".Length..]).HashPart}.narinfo";

        // 20.3: alice's NARs waiting for their narinfos stop at the bound (1 MiB here); bob's are his own; once alice
        // completes one, she may upload again.
        var (first, second, bobs) = (Upload("first"), Upload("second"), Upload("bobs"));
        Assert.Equal(HttpStatusCode.OK, (await PutAsync(first.File, alice, first.Nar)).Status);
        var refused = await PutAsync(second.File, alice, second.Nar);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, refused.Status);
        Assert.Contains("waiting for their narinfo would exceed 1048576 bytes", refused.Body, StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.OK, (await PutAsync(bobs.File, bob, bobs.Nar)).Status);
        Assert.Equal(HttpStatusCode.OK, (await PutAsync(NarInfoPath(first.NarInfo), alice, System.Text.Encoding.UTF8.GetBytes(first.NarInfo))).Status);
        Assert.Equal(HttpStatusCode.OK, (await PutAsync(second.File, alice, second.Nar)).Status);
        Assert.Equal(HttpStatusCode.OK, (await PutAsync(NarInfoPath(second.NarInfo), alice, System.Text.Encoding.UTF8.GetBytes(second.NarInfo))).Status);

        // 20.4: 50 MB of zeros in 8 KB of xz, behind a narinfo that says 1,000 bytes: read up to those, no further.
        var bomb = Kiln.Nix.Tests.Support.NarBuilder.Start().Tokens("(", "type", "regular", "contents").Raw(new byte[50_000_000]).Tokens(")").ToArray();
        var xz = Kiln.Nix.Tests.Support.Processes.Run("xz", ["-c"], bomb).Stdout;
        var file = Kiln.Nix.Hashing.NixHash.Compute(Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, xz).ToNix32() + ".nar.xz";
        var bombPath = StorePath.FromHash(System.Security.Cryptography.RandomNumberGenerator.GetBytes(20), "bomb");
        var bombInfo = $"StorePath: {bombPath}\nURL: nar/{file}\nCompression: xz\nNarHash: {Kiln.Nix.Hashing.NixHash.Compute(Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, "x")}\nNarSize: 1000\nReferences: \n";
        Assert.Equal(HttpStatusCode.OK, (await PutAsync($"/nar/{file}", alice, xz)).Status);
        var exploded = await PutAsync(NarInfoPath(bombInfo), alice, System.Text.Encoding.UTF8.GetBytes(bombInfo));
        Assert.Equal(HttpStatusCode.BadRequest, exploded.Status);
        Assert.Contains("specified: 1000", exploded.Body, StringComparison.Ordinal);
        Assert.Contains("got:       more than that", exploded.Body, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", kiln.Log, StringComparison.Ordinal);
    }

    [Fact]
    public void The_server_watches_no_directory_it_was_started_from()
    {
        // ASP.NET Core's default watches the working directory, and every directory below it, for configuration
        // changes: started from /, kiln serve held an inotify watch on each directory of the machine. This one starts
        // from the tests' directory, which has directories below it.
        using var kiln = new KilnProcess(http: true);
        Assert.Equal(0, InotifyWatches(kiln.ProcessId));
    }

    private static int InotifyWatches(int pid)
    {
        var watches = 0;
        foreach (var fd in Directory.GetFiles($"/proc/{pid}/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget == "anon_inode:inotify")
                {
                    watches += File.ReadLines($"/proc/{pid}/fdinfo/{Path.GetFileName(fd)}").Count(l => l.StartsWith("inotify ", StringComparison.Ordinal));
                }
            }
            catch (IOException)
            {
                // closed meanwhile
            }
        }

        return watches;
    }
}
