using System.IO.Pipelines;
using System.Net.Sockets;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// A stock Nix machine as a builder: Nix 2.34's own <c>nix-daemon</c> (from its chroot, with a store of its own)
/// behind a private OpenSSH sshd on loopback, added with <c>kiln builder add</c>. Kiln logs in as any Nix client
/// would, copies the input closure there, builds through the daemon and copies the outputs back.
/// </summary>
public class StockBuilderTests(ITestOutputHelper output)
{
    private const string Kiln = NixClient.SocketUri;

    // Writes FILE.nix in the workspace: one derivation needing the builder's feature, running SCRIPT with busybox
    // (ATTRIBUTES: more attributes, Nix syntax); returns its path in the chroot.
    private static string WriteNeedingFeature(NixClient client, Workspace workspace, string name, string script, string attributes = "")
    {
        Dag.WriteBusybox(client, workspace);
        var file = $"{workspace}/{name}.nix";
        File.WriteAllText(client.HostPath(file), $$"""
            let bb = ./bb; in derivation {
              name = "{{name}}"; system = "x86_64-linux"; builder = "${bb}/bin/sh"; PATH = "${bb}/bin";
              requiredSystemFeatures = [ "kiln-stock-feature" ]; args = [ "-c" "{{script}}" ]; {{attributes}}
            }
            """);
        return file;
    }

    [Fact]
    public async Task A_derivation_needing_a_feature_only_a_stock_builder_has_is_built_there_and_its_output_is_valid_and_fetchable()
    {
        var client = NixClient.For("2.34.8");
        using var builder = new StockNixBuilder("kiln-stock-feature");
        using var kiln = new KilnProcess(arguments: ["--agent-wait", "10"]);
        var added = kiln.Cli("builder", "add", "stock", builder.Uri, "--system", "x86_64-linux", "--features", "kiln-stock-feature", "--max-jobs", "2",
            "--ssh-key", builder.ClientKeyPath, "--host-key", builder.HostKeyLine);
        Assert.Contains("added builder stock", added, StringComparison.Ordinal);
        var listed = kiln.Cli("builder", "list");
        Assert.Contains("stock: " + builder.Uri, listed, StringComparison.Ordinal);
        Assert.DoesNotContain("PRIVATE KEY", listed + kiln.Cli("builder", "list", "--json"), StringComparison.Ordinal);

        using var workspace = client.NewWorkspace();
        Dag.WriteBusybox(client, workspace);
        var marker = Guid.NewGuid().ToString("N");
        // The input is built by Kiln's own agent (no feature needed); the step needing the feature goes to the builder,
        // which must be sent that input and the busybox source first.
        File.WriteAllText(client.HostPath($"{workspace}/stock.nix"), $$"""
            let bb = ./bb;
              input = derivation {
                name = "stock-input-{{marker}}"; system = "x86_64-linux"; builder = "${bb}/bin/sh"; PATH = "${bb}/bin";
                args = [ "-c" "mkdir $out; echo {{marker}} > $out/from-kiln" ];
              };
            in derivation {
              name = "stock-built-{{marker}}"; system = "x86_64-linux"; builder = "${bb}/bin/sh"; PATH = "${bb}/bin";
              requiredSystemFeatures = [ "kiln-stock-feature" ];
              args = [ "-c" "echo building on the stock builder {{marker}}; mkdir $out; cat ${input}/from-kiln > $out/greeting; ln -s ${input} $out/input" ];
            }
            """);
        var build = client.Ok(kiln, "nix-build", "--store", Kiln, $"{workspace}/stock.nix", "--no-out-link");
        var outPath = build.StdoutText.Trim().Split('\n')[^1];
        Assert.Contains($"building on the stock builder {marker}", build.Stderr, StringComparison.Ordinal); // the log came through live

        // The step ran there (its build record names the builder), the input ran on Kiln's agent.
        await using (var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db")))
        {
            var builds = await metadata.ListBuildsAsync(null, 100, CancellationToken.None);
            output.WriteLine(string.Join("\n", builds.Select(b => $"{b.DrvPath} {b.Agent} {b.Succeeded}")));
            Assert.Equal("stock", Assert.Single(builds, b => b.DrvPath.Contains("stock-built", StringComparison.Ordinal)).Agent);
            Assert.Equal("embedded", Assert.Single(builds, b => b.DrvPath.Contains("stock-input", StringComparison.Ordinal)).Agent);
        }

        // Both are in the builder's own store now, and the output is valid in Kiln's, with its reference to the input.
        Assert.True(Directory.Exists(Path.Combine(builder.StoreDirectory, Path.GetFileName(outPath))), builder.Log);
        var references = client.Ok(kiln, "nix-store", "--store", Kiln, "--query", "--references", outPath).StdoutText;
        Assert.Contains($"stock-input-{marker}", references, StringComparison.Ordinal);
        client.Ok(kiln, "nix", "store", "verify", "--store", Kiln, "--no-trust", outPath);

        // And fetchable by the client: its contents, through the daemon.
        var greeting = client.Ok(kiln, "nix", "store", "cat", "--store", Kiln, $"{outPath}/greeting").StdoutText;
        Assert.Equal(marker + "\n", greeting);

        // Removed, the builder gets nothing more: the next such step waits for someone with the feature, then fails.
        kiln.Cli("builder", "remove", "stock");
        await Task.Delay(TimeSpan.FromSeconds(5)); // the server reads the list every few seconds
        var after = client.Run(kiln, "nix-build", "--store", Kiln, WriteNeedingFeature(client, workspace, $"stock-after-{marker}", "mkdir $out"), "--no-out-link");
        Assert.NotEqual(0, after.ExitCode);
        Assert.Contains("waiting for an agent", after.Stderr, StringComparison.Ordinal);
    }

    // The attack the trust rule stops: an account uploads its own contents under an input-addressed path (here a
    // made-up "private-input"; it could be the output path of a real package) and asks for a build using it that only
    // the stock builder can run. Were it sent there, the builder's one store would hold the account's contents under
    // that path for every later build. The build is never placed there (it waits for an agent and fails), and the
    // builder's store never sees the path.
    [Fact]
    public async Task An_accounts_own_contents_under_an_input_addressed_path_never_reach_a_stock_builder()
    {
        var client = NixClient.For("2.34.8");
        using var builder = new StockNixBuilder("kiln-stock-feature");
        using var kiln = new KilnProcess(arguments: ["--agent-wait", "3"]);
        kiln.Cli("builder", "add", "stock", builder.Uri, "--features", "kiln-stock-feature", "--ssh-key", builder.ClientKeyPath, "--host-key", builder.HostKeyLine);

        var marker = Guid.NewGuid().ToString("N");
        var nar = NarBuilder.Start().File($"uploaded by the account {marker}\n").ToArray();
        var uploaded = StorePath.FromHash(NixHash.Compute(NixHashAlgorithm.Sha256, nar).Digest[..20], "private-input");
        using (var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(kiln.SocketPath));
            await using var stream = new NetworkStream(socket);
            var daemon = await WorkerClient.ConnectAsync(PipeReader.Create(stream), PipeWriter.Create(stream), CancellationToken.None);
            var info = new ValidPathInfo { Path = uploaded, NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar), NarSize = nar.Length };
            await daemon.AddToStoreNarAsync(info, new MemoryStream(nar), repair: false, CancellationToken.None);
        }

        using var workspace = client.NewWorkspace();
        var file = WriteNeedingFeature(client, workspace, $"stock-private-{marker}", "cat $input > $out", $"input = builtins.storePath \"{uploaded}\";");
        var build = client.Run(kiln, "nix-build", "--store", Kiln, file, "--no-out-link");
        Assert.NotEqual(0, build.ExitCode);
        Assert.Contains("waiting for an agent", build.Stderr, StringComparison.Ordinal);
        Assert.False(Path.Exists(Path.Combine(builder.StoreDirectory, uploaded.BaseName)), "the account's contents reached the stock builder");
        Assert.DoesNotContain(uploaded.BaseName, builder.Log, StringComparison.Ordinal);
    }

    // What the builder's store already holds under an output path was not built for this job (an earlier build from
    // other inputs, or the machine's own users): it is removed and the output built, never taken as the build's.
    [Fact]
    public async Task Contents_already_at_an_output_path_on_the_builder_are_not_taken_as_the_build()
    {
        var client = NixClient.For("2.34.8");
        using var builder = new StockNixBuilder("kiln-stock-feature");
        using var kiln = new KilnProcess(arguments: ["--agent-wait", "10"]);
        kiln.Cli("builder", "add", "stock", builder.Uri, "--features", "kiln-stock-feature", "--ssh-key", builder.ClientKeyPath, "--host-key", builder.HostKeyLine);
        using var workspace = client.NewWorkspace();
        var file = WriteNeedingFeature(client, workspace, $"stock-planted-{Guid.NewGuid():N}", "echo really built > $out");
        var drv = client.Ok(kiln, "nix-instantiate", "--store", Kiln, file).StdoutText.Trim();
        var outPath = client.Ok(kiln, "nix-store", "--store", Kiln, "--query", "--outputs", drv).StdoutText.Trim();
        await builder.AddAsync(StorePath.Parse(outPath), NarBuilder.Start().File("planted on the builder\n").ToArray());
        Assert.True(File.Exists(Path.Combine(builder.StoreDirectory, Path.GetFileName(outPath))));

        client.Ok(kiln, "nix-store", "--store", Kiln, "--realise", drv);
        Assert.Equal("really built\n", client.Ok(kiln, "nix", "store", "cat", "--store", Kiln, outPath).StdoutText);
        Assert.Equal("really built\n", File.ReadAllText(Path.Combine(builder.StoreDirectory, Path.GetFileName(outPath))));
    }

    // A builder that cannot be reached costs the jobs nothing but time: it is withdrawn from the queue while it is
    // down (no attempts spent on it), so a step only it could run waits as for any missing agent and then fails with
    // the clear message — which names neither its address nor what ssh said (tenants read build logs).
    [Fact]
    public void A_builder_that_cannot_be_reached_is_withdrawn_and_its_address_never_reaches_the_client()
    {
        var client = NixClient.For("2.34.8");
        using var builder = new StockNixBuilder("kiln-stock-feature");
        using var kiln = new KilnProcess(arguments: ["--agent-wait", "3"]);
        var dead = $"ssh-ng://root@127.0.0.1:{KilnProcess.FreePort()}";
        kiln.Cli("builder", "add", "down", dead, "--features", "kiln-stock-feature", "--max-jobs", "2", "--ssh-key", builder.ClientKeyPath);
        using var workspace = client.NewWorkspace();
        var build = client.Run(kiln, "nix-build", "--store", Kiln, WriteNeedingFeature(client, workspace, $"stock-down-{Guid.NewGuid():N}", "mkdir $out"), "--no-out-link");
        Assert.NotEqual(0, build.ExitCode);
        Assert.Contains("is required to build", build.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("attempts", build.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("127.0.0.1", build.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Connection refused", build.Stderr, StringComparison.Ordinal);
        Assert.Contains("cannot reach the Nix daemon at " + dead, kiln.Log, StringComparison.Ordinal); // the operator is told
    }
}
