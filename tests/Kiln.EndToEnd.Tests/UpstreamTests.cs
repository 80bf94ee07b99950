using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.StorePaths;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Kiln substituting from an upstream cache on the farm side. The upstream is a "fake cache.nixos.org" made of real
/// parts: stock Nix builds a DAG and writes a signed binary cache with <c>nix copy --to file://…?secret-key=…</c>
/// (xz-compressed, Nix's default), and nginx serves it. The client then asks Kiln to build something on top of that
/// DAG; Kiln must fetch the DAG's outputs itself (the client uploads none of them) and build only the new part.
/// </summary>
public class UpstreamTests
{
    private const string Socket = NixClient.SocketUri;

    /// <summary>An upstream cache: the DAG file, its outputs, the cache directory (host path) and its public key.</summary>
    private sealed record Upstream(string Dag, string[] Outputs, string CacheDirectory, string PublicKey);

    // Builds the DAG in a private store of the client and writes it, signed, to a file:// cache.
    private static Upstream MakeUpstream(NixClient client, KilnProcess kiln, string workspace, string extraScript = "")
    {
        var dag = Dag.Write(client, workspace, "updag", depth: 2, width: 3, salt: Guid.NewGuid().ToString("N"));
        if (extraScript.Length > 0)
        {
            // The top layer gains a big output when asked (to have something that takes a while to download).
            var text = File.ReadAllText(client.HostPath(dag));
            File.WriteAllText(client.HostPath(dag), text.Replace("echo ${toString l}-${toString i} > $out/id;", $"echo ${{toString l}}-${{toString i}} > $out/id; {extraScript};", StringComparison.Ordinal));
        }

        var outputs = BuildOnHost(client, workspace, dag);
        var host = client.HostPath(workspace);
        var upstreamStore = $"local?root={host}/upstream";
        Host("nix-store", "--generate-binary-cache-key", "upstream-test-1", $"{host}/upstream.secret", $"{host}/upstream.public");
        Host(["nix", "copy", "--store", upstreamStore, "--to", $"file://{host}/cache?secret-key={host}/upstream.secret", .. outputs]);
        return new Upstream(dag, outputs, $"{host}/cache", File.ReadAllText($"{host}/upstream.public").Trim());
    }

    /// <summary>
    /// Builds a DAG file with the host's Nix 2.8 into a store of its own, <c>WORKSPACE/upstream</c> (the clients' chroots
    /// have no build users or terminals); the store paths are the same the clients compute, as the DAG file and busybox
    /// are the same files. Returns the outputs.
    /// </summary>
    internal static string[] BuildOnHost(NixClient client, string workspace, string dag) =>
        Host("nix-build", "--store", $"local?root={client.HostPath(workspace)}/upstream", client.HostPath(dag), "--no-out-link").Split('\n', StringSplitOptions.RemoveEmptyEntries);

    private static string Host(params string[] command)
    {
        var result = Kiln.Nix.Tests.Support.Processes.Run(command[0], command[1..], environment: new Dictionary<string, string>
        {
            ["NIX_CONFIG"] = "experimental-features = nix-command\nbuild-users-group = \nsandbox = false\nsubstituters = \n",
            ["NIX_REMOTE"] = "",
        });
        Assert.True(result.ExitCode == 0, $"{string.Join(' ', command)}: {result.Stderr}");
        return result.StdoutText;
    }

    // A derivation on top of the DAG's outputs: the only thing Kiln should have to build.
    internal static string WriteConsumer(NixClient client, string workspace, string dag)
    {
        var file = $"{workspace}/consumer.nix";
        File.WriteAllText(client.HostPath(file), $$"""
            let bb = ./bb; deps = import {{dag}}; in derivation {
              name = "consumer-{{Guid.NewGuid():N}}";
              system = "x86_64-linux";
              builder = "${bb}/bin/sh";
              inherit deps;
              args = [ "-c" "${bb}/bin/busybox mkdir $out; for d in $deps; do ${bb}/bin/busybox cat $d/id >> $out/ids; done" ];
            }
            """);
        return file;
    }

    private static async Task<(IReadOnlyList<BuildRecord> Builds, IReadOnlyDictionary<StorePath, PathRecord> Records)> KilnStateAsync(KilnProcess kiln, string[] paths)
    {
        await using var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db"));
        var account = (await metadata.FindAccountAsync("local", CancellationToken.None))!.Id;
        return (await metadata.ListBuildsAsync(account, 1000, CancellationToken.None),
            await metadata.GetPathsAsync(account, paths.Select(StorePath.Parse).ToList(), CancellationToken.None));
    }

    [Fact]
    public void A_dry_run_tells_the_client_when_an_upstream_cache_fails()
    {
        // QueryMissing asks the upstream caches; their warnings were dropped (StoreView.Warnings was never set, on
        // 8b92d5f): the client must hear that a cache failed, as stock Nix's dry run says so.
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess();
        kiln.Cli("account", "set", "local", "--substituters", "http://127.0.0.1:1");
        using var workspace = client.NewWorkspace();
        var single = Dag.WriteSingle(client, workspace, "dry", $"echo {Guid.NewGuid()}; mkdir $out");
        var dryRun = client.Ok(kiln, "nix-build", "--dry-run", "--store", Socket, single);
        Assert.Contains("will be built", dryRun.Stderr, StringComparison.Ordinal);
        Assert.Contains("substituter 'http://127.0.0.1:1/' failed", dryRun.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task A_remote_store_build_substitutes_its_inputs_from_the_upstream_cache_on_Kiln_side(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var upstream = MakeUpstream(client, kiln, workspace);
        using var nginx = new Nginx(upstream.CacheDirectory);
        kiln.Cli("account", "set", "local", "--substituters", nginx.Url, "--trusted-public-keys", upstream.PublicKey);

        var consumer = WriteConsumer(client, workspace, upstream.Dag);

        // QueryMissing already says so: one derivation to build, the DAG's outputs to fetch.
        var dryRun = client.Ok(kiln, "nix-build", "--dry-run", "--store", Socket, consumer).Stderr;
        Assert.Contains("will be fetched", dryRun, StringComparison.Ordinal);
        Assert.DoesNotContain("-dag-1-0.drv", dryRun, StringComparison.Ordinal);

        var result = client.Ok(kiln, "nix-build", "--store", Socket, consumer, "--no-out-link");
        var built = result.StdoutText.Trim();
        Assert.Equal(3, File.ReadAllLines(Path.Combine(kiln.StoreRoot, built.TrimStart('/'), "ids")).Length);
        // Kiln's own line says what it fetched instead of building (the client would otherwise see nothing for it).
        Assert.Contains("kiln: fetched the outputs of '/nix/store/", result.Stderr, StringComparison.Ordinal);

        // Kiln built the consumer alone; the DAG's outputs came from upstream, not from the client.
        var (builds, records) = await KilnStateAsync(kiln, upstream.Outputs);
        Assert.Single(builds);
        Assert.Contains("consumer-", builds[0].DrvPath, StringComparison.Ordinal);
        Assert.Equal(upstream.Outputs.Length, records.Count);
        Assert.All(records.Values, r => Assert.Equal(Provenance.Substituted, r.Provenance));
        // Signed by a key the account trusts (its own --trusted-public-keys): trusted by that account, not globally.
        Assert.All(records.Values, r => Assert.Equal(PathTrust.SignedByAccountKey, r.Trust));
    }

    [Fact]
    public async Task An_upstream_path_signed_by_a_key_Kiln_does_not_trust_is_built_instead_with_a_warning()
    {
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var upstream = MakeUpstream(client, kiln, workspace);
        using var nginx = new Nginx(upstream.CacheDirectory);
        var stranger = "upstream-test-1:" + Convert.ToBase64String(new byte[32]); // the right name, the wrong key
        kiln.Cli("account", "set", "local", "--substituters", nginx.Url, "--trusted-public-keys", stranger);

        var result = client.Ok(kiln, "nix-build", "--store", Socket, WriteConsumer(client, workspace, upstream.Dag), "--no-out-link");
        Assert.Contains("not signed by a key you trust", result.Stderr, StringComparison.Ordinal);
        var (builds, records) = await KilnStateAsync(kiln, upstream.Outputs);
        Assert.Equal(7, builds.Count);
        Assert.All(records.Values, r => Assert.Equal(Provenance.Built, r.Provenance));
    }

    [Fact]
    public async Task Upstream_dying_mid_download_falls_back_to_building()
    {
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        // Each output carries 2 MB of random bytes (incompressible); nginx sends 128 KB/s, so a download takes ~16 s.
        var upstream = MakeUpstream(client, kiln, workspace, "${bb}/bin/busybox head -c 2000000 /dev/urandom > $out/big");
        using var nginx = new Nginx(upstream.CacheDirectory, rateLimit: "128k");
        kiln.Cli("account", "set", "local", "--substituters", nginx.Url, "--trusted-public-keys", upstream.PublicKey);

        using var build = client.Start(kiln, "nix-build", "--store", Socket, WriteConsumer(client, workspace, upstream.Dag), "--no-out-link");
        var stderr = build.StandardError.ReadToEndAsync();
        var stdout = build.StandardOutput.ReadToEndAsync();
        await Task.Delay(TimeSpan.FromSeconds(4));
        nginx.Stop();
        Assert.True(build.WaitForExit(TimeSpan.FromMinutes(3)));
        Assert.True(build.ExitCode == 0, await stderr);
        Assert.Contains("building it instead", await stderr, StringComparison.Ordinal);
        Assert.StartsWith("/nix/store/", (await stdout).Trim(), StringComparison.Ordinal);

        // Whatever did not arrive whole was built: every output is valid, and no half-download is registered.
        var (builds, records) = await KilnStateAsync(kiln, upstream.Outputs);
        Assert.Equal(upstream.Outputs.Length, records.Count);
        Assert.Contains(records.Values, r => r.Provenance == Provenance.Built);
        Assert.All(builds, b => Assert.True(b.Succeeded, b.Error));
    }
}
