using Kiln.EndToEnd.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// Real Nix clients of four versions (2.3.7, 2.8.0, 2.26.3, 2.34.8), each in its own chroot with its own store,
/// against a running <c>kiln serve</c> over its unix socket.
/// </summary>
public class WorkerProtocolTests
{
    private const string Kiln = NixClient.SocketUri;

    private static string Local(string workspace, string name) => $"local?root={workspace}/{name}";

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public void Ping_shows_kiln(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        string[] command = client.Is23 ? ["nix", "ping-store", "--store", Kiln]
            : version == "2.8.0" ? ["nix", "store", "ping", "--store", Kiln]
            : ["nix", "store", "info", "--store", Kiln];
        var result = client.Ok(kiln, command);
        if (!client.Is23)
        {
            Assert.Contains("Kiln", result.StdoutText + result.Stderr, StringComparison.Ordinal);
        }

        // SIGTERM stops the server cleanly, after it has logged the session.
        Assert.Equal(0, kiln.Stop());
        Assert.Matches("session 1 account=local client=1\\.(21|34|37|38) ops=", kiln.Log);
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public void Copies_a_closure_in_and_out_with_identical_nar_hashes(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var expression = Closure.Write(client, workspace, chain: 150);
        var top = client.Ok(kiln, "nix-instantiate", "--store", Local(workspace, "a"), expression).StdoutText.Trim();

        var drv = client.DerivationFlag;
        client.Ok(kiln, ["nix", "copy", .. drv, "--from", Local(workspace, "a"), "--to", Kiln, top]);
        var original = Closure.NarHashes(client.Ok(kiln, ["nix", "path-info", .. drv, "--store", Local(workspace, "a"), "-r", "--json", top]).StdoutText);
        Assert.True(original.Count > 300, $"closure of {original.Count} paths");
        var inKiln = Closure.NarHashes(client.Ok(kiln, ["nix", "path-info", .. drv, "--store", Kiln, "-r", "--json", top]).StdoutText);
        Assert.Equal(original, inKiln);

        client.Ok(kiln, ["nix", "copy", .. drv, "--from", Kiln, "--to", Local(workspace, "b"), top]);
        var copiedBack = Closure.NarHashes(client.Ok(kiln, ["nix", "path-info", .. drv, "--store", Local(workspace, "b"), "-r", "--json", top]).StdoutText);
        Assert.Equal(original, copiedBack);
        Assert.Equal(0, kiln.Stop());
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public void Nix_store_add_gives_the_same_path_as_a_local_store(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        Closure.Write(client, workspace, chain: 1);
        foreach (var source in new[] { $"{workspace}/src/tree", $"{workspace}/src/big0" })
        {
            var local = client.Ok(kiln, "nix-store", "--store", Local(workspace, "a"), "--add", source).StdoutText.Trim();
            var remote = client.Ok(kiln, "nix-store", "--store", Kiln, "--add", source).StdoutText.Trim();
            Assert.Equal(local, remote);
            client.Ok(kiln, "nix", "path-info", "--store", Kiln, remote);
        }

        // Flat, fixed-output adds (Nix 2.3 sends these as a NAR of one file).
        var flatLocal = client.Ok(kiln, "nix-store", "--store", Local(workspace, "a"), "--add-fixed", "sha256", $"{workspace}/src/big1").StdoutText.Trim();
        var flatRemote = client.Ok(kiln, "nix-store", "--store", Kiln, "--add-fixed", "sha256", $"{workspace}/src/big1").StdoutText.Trim();
        Assert.Equal(flatLocal, flatRemote);
        var hashes = Closure.NarHashes(client.Ok(kiln, "nix", "path-info", "--store", Kiln, "--json", flatRemote).StdoutText);
        var localHashes = Closure.NarHashes(client.Ok(kiln, "nix", "path-info", "--store", Local(workspace, "a"), "--json", flatLocal).StdoutText);
        Assert.Equal(localHashes, hashes);
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public void Instantiates_into_kiln_and_answers_queries_as_a_local_store_does(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var expression = Closure.Write(client, workspace, chain: 6, seed: 2);
        var local = client.Ok(kiln, "nix-instantiate", "--store", Local(workspace, "a"), expression).StdoutText.Trim();
        var remote = client.Ok(kiln, "nix-instantiate", "--store", Kiln, expression).StdoutText.Trim();
        Assert.Equal(local, remote);

        foreach (var query in new[] { "--requisites", "--references", "--outputs" })
        {
            var expected = client.Ok(kiln, "nix-store", "--store", Local(workspace, "a"), "-q", query, remote).StdoutText;
            var actual = client.Ok(kiln, "nix-store", "--store", Kiln, "-q", query, remote).StdoutText;
            Assert.Equal(Lines(expected), Lines(actual));
        }

        var source = Lines(client.Ok(kiln, "nix-store", "--store", Kiln, "-q", "--requisites", remote).StdoutText).First(p => p.EndsWith("-tree", StringComparison.Ordinal));
        foreach (var query in new[] { "--referrers", "--deriver", "--hash", "--size" })
        {
            var expected = client.Ok(kiln, "nix-store", "--store", Local(workspace, "a"), "-q", query, source).StdoutText;
            var actual = client.Ok(kiln, "nix-store", "--store", Kiln, "-q", query, source).StdoutText;
            Assert.Equal(Lines(expected), Lines(actual));
        }

        if (!client.Is23)
        {
            var shown = client.Ok(kiln, "nix", "show-derivation", "--store", Kiln, remote).StdoutText;
            Assert.Contains("chain-6", shown, StringComparison.Ordinal);
        }
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public void Verify_passes_and_then_finds_a_corrupted_blob(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        Closure.Write(client, workspace, chain: 1);
        var path = client.Ok(kiln, "nix-store", "--store", Kiln, "--add", $"{workspace}/src/big0").StdoutText.Trim();
        string[] verify = client.Is23 ? ["nix", "verify", "--store", Kiln, "--all"] : ["nix", "store", "verify", "--store", Kiln, "--all"];
        client.Ok(kiln, verify);

        // Flip a byte of the unpacked file clients read: verification with contents must notice.
        var file = Path.Combine(kiln.StoreRoot, "nix/store", Path.GetFileName(path));
        File.SetUnixFileMode(file, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        var bytes = File.ReadAllBytes(file);
        bytes[^20] ^= 0xff;
        File.WriteAllBytes(file, bytes);
        var result = client.Run(kiln, verify);
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains(path, result.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public void Garbage_collection_keeps_rooted_paths_and_removes_the_rest(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var expression = Closure.Write(client, workspace, chain: 3, seed: 3);
        // The client makes a symlink in its own file system (in its chroot) and registers it as an indirect root.
        var rooted = client.Ok(kiln, "nix-instantiate", "--store", Kiln, "--add-root", $"{workspace}/result", "--indirect", expression).StdoutText.Trim();
        Assert.Equal($"{workspace}/result", rooted);
        rooted = new FileInfo(client.HostPath($"{workspace}/result")).LinkTarget!;
        File.WriteAllText(client.HostPath($"{workspace}/unrooted.txt"), "nothing refers to me\n");
        var unrooted = client.Ok(kiln, "nix-store", "--store", Kiln, "--add", $"{workspace}/unrooted.txt").StdoutText.Trim();
        var rootedClosure = Lines(client.Ok(kiln, "nix-store", "--store", Kiln, "-q", "--requisites", rooted).StdoutText);
        client.Ok(kiln, "nix-store", "--store", Kiln, "--gc");

        client.Ok(kiln, ["nix-store", "--store", Kiln, "--check-validity", .. rootedClosure]);
        Assert.NotEqual(0, client.Run(kiln, "nix-store", "--store", Kiln, "--check-validity", unrooted).ExitCode);
        Assert.False(Path.Exists(Path.Combine(kiln.StoreRoot, "nix/store", Path.GetFileName(unrooted))));
        Assert.True(Path.Exists(Path.Combine(kiln.StoreRoot, "nix/store", Path.GetFileName(rooted))));

        // Removing the symlink removes the root.
        File.Delete(client.HostPath($"{workspace}/result"));
        client.Ok(kiln, "nix-store", "--store", Kiln, "--gc");
        Assert.NotEqual(0, client.Run(kiln, "nix-store", "--store", Kiln, "--check-validity", rooted).ExitCode);
        Assert.Empty(Directory.GetFiles(Path.Combine(kiln.DataDirectory, "blobs"), "*.nar", SearchOption.AllDirectories));
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(kiln.StoreRoot, "nix/store")));
    }

    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public void Serves_as_a_substituter(string version)
    {
        var client = NixClient.For(version);
        using var kiln = new KilnProcess();
        using var workspace = client.NewWorkspace();
        var expression = Closure.Write(client, workspace, chain: 2, seed: 4);
        var top = client.Ok(kiln, "nix-instantiate", "--store", Kiln, expression).StdoutText.Trim();
        var wanted = Lines(client.Ok(kiln, "nix-store", "--store", Kiln, "-q", "--requisites", top).StdoutText)
            .Where(p => !p.EndsWith(".drv", StringComparison.Ordinal)).ToList();

        // An empty client store realises them by substituting from Kiln.
        client.Ok(kiln, ["nix-store", "--store", Local(workspace, "c"), "--realise", .. wanted,
            "--option", "substituters", Kiln, "--option", "require-sigs", "false"]);
        var hashes = Closure.NarHashes(client.Ok(kiln, ["nix", "path-info", "--store", Local(workspace, "c"), "--json", .. wanted]).StdoutText);
        var inKiln = Closure.NarHashes(client.Ok(kiln, ["nix", "path-info", "--store", Kiln, "--json", .. wanted]).StdoutText);
        Assert.Equal(inKiln, hashes);
    }

    private static List<string> Lines(string text) =>
        text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Order(StringComparer.Ordinal).ToList();
}
