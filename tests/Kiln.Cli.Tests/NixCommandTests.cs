using System.Text;
using Kiln.Nix.Tests.Nar;
using Kiln.Nix.Tests.Support;

namespace Kiln.Cli.Tests;

/// <summary>The kiln nix commands against the real Nix, on golden data and on random inputs.</summary>
public class NixCommandTests
{
    private static string Hello => Repo.Golden("drv", "src", "hello.txt");

    [Fact]
    public void Dump_path_matches_the_golden_archives()
    {
        using var temp = new TempDir();
        Assert.Equal(0, Processes.Run("bash", [Repo.Golden("make-trees.sh"), temp["trees"]]).ExitCode);
        foreach (var line in File.ReadAllLines(Repo.Golden("nar", "hashes.txt")))
        {
            var entry = line.Split(' ')[0];
            var nar = KilnCli.Ok("nix", "dump-path", Path.Combine(temp["trees"], entry)).Stdout;
            Assert.Equal(File.ReadAllBytes(Repo.Golden("nar", entry + ".nar")), nar);
        }
    }

    [Fact]
    public void Dump_path_appends_to_a_redirected_file_like_nix_store_dump()
    {
        // Large files go through sendfile at the descriptor's offset: after what the shell already wrote.
        using var temp = new TempDir();
        Assert.Equal(0, Processes.Run("bash", [Repo.Golden("make-trees.sh"), temp["trees"]]).ExitCode);
        var kiln = Path.Combine(AppContext.BaseDirectory, "kiln.dll");
        var script = $"printf prefix > '{temp["out"]}' && dotnet '{kiln}' nix dump-path '{temp["trees"]}/sizes' >> '{temp["out"]}'";
        Assert.Equal(0, Processes.Run("bash", ["-c", script]).ExitCode);
        Assert.Equal([.. "prefix"u8, .. File.ReadAllBytes(Repo.Golden("nar", "sizes.nar"))], File.ReadAllBytes(temp["out"]));
    }

    [Fact]
    public void Dump_and_hash_agree_with_nix_on_random_trees()
    {
        NixTool.Require();
        var random = new Random(77);
        for (var i = 0; i < 4; i++)
        {
            using var temp = new TempDir();
            var root = temp["tree"];
            RandomTree.Create(random, root, 0);
            Assert.Equal(NixTool.Run("nix-store", "--dump", root).Stdout, KilnCli.Ok("nix", "dump-path", root).Stdout);
            Assert.Equal(NixTool.Run("nix-hash", "--type", "sha256", "--base32", root).StdoutText, KilnCli.Ok("nix", "hash-path", root).StdoutText);
        }
    }

    [Theory]
    [InlineData("sha256", "--base32", "--base32")]
    [InlineData("sha256", "--base16", null)]
    [InlineData("sha1", "--base32", "--base32")]
    [InlineData("md5", "--base16", null)]
    [InlineData("sha512", "--base32", "--base32")]
    public void Hash_path_prints_what_nix_hash_prints(string type, string kilnFormat, string? nixFormat)
    {
        NixTool.Require();
        var target = Repo.Golden("drv", "src");
        string[] nixArgs = nixFormat is null ? ["--type", type, target] : ["--type", type, nixFormat, target];
        Assert.Equal(NixTool.Run("nix-hash", nixArgs).StdoutText, KilnCli.Ok("nix", "hash-path", "--type", type, kilnFormat, target).StdoutText);
        Assert.Equal(NixTool.Run("nix-hash", ["--flat", .. nixArgs[..^1], Hello]).StdoutText,
            KilnCli.Ok("nix", "hash-path", "--flat", "--type", type, kilnFormat, Hello).StdoutText);
    }

    [Theory]
    [InlineData("sha256")]
    [InlineData("sha512")]
    public void Hash_path_sri_matches_nix_hash_path(string type)
    {
        NixTool.Require();
        var target = Repo.Golden("drv", "src");
        Assert.Equal(NixTool.Run("nix", "hash", "path", "--type", type, target).StdoutText,
            KilnCli.Ok("nix", "hash-path", "--type", type, "--sri", target).StdoutText);
    }

    [Fact]
    public void Hash_path_defaults_to_sha256_in_nix32()
    {
        Assert.Equal("04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw\n", KilnCli.Ok("nix", "hash-path", Hello).StdoutText);
    }

    [Fact]
    public void Restore_path_unpacks_what_nix_can_dump_again()
    {
        using var temp = new TempDir();
        var nar = File.ReadAllBytes(Repo.Golden("nar", "mixed.nar"));
        KilnCli.Ok(nar, "nix", "restore-path", temp["out"]);
        Assert.Equal(nar, KilnCli.Ok("nix", "dump-path", temp["out"]).Stdout);
    }

    [Fact]
    public void Restore_path_of_a_nar_nix_dumped_round_trips_through_nix()
    {
        NixTool.Require();
        using var temp = new TempDir();
        var nar = NixTool.Run("nix-store", "--dump", Repo.Golden("drv", "src")).Stdout;
        KilnCli.Ok(nar, "nix", "restore-path", temp["out"]);
        Assert.Equal(nar, NixTool.Run("nix-store", "--dump", temp["out"]).Stdout);
    }

    [Theory]
    [InlineData("unsorted")]
    [InlineData("dotdot")]
    [InlineData("truncated")]
    [InlineData("trailing")]
    public void Restore_path_refuses_unsafe_archives_cleanly(string kind)
    {
        using var temp = new TempDir();
        var nar = kind switch
        {
            "unsorted" => NarBuilder.Start().OpenDirectory().Entry("b", n => n.File("x")).Entry("a", n => n.File("y")).CloseDirectory().ToArray(),
            "dotdot" => NarBuilder.Start().OpenDirectory().Entry("..", n => n.Symlink("/")).CloseDirectory().ToArray(),
            "truncated" => File.ReadAllBytes(Repo.Golden("nar", "mixed.nar"))[..1000],
            _ => [.. File.ReadAllBytes(Repo.Golden("nar", "t8.nar")), 0, 0, 0, 0, 0, 0, 0, 0],
        };
        KilnCli.AssertOneLineError(KilnCli.Run(nar, "nix", "restore-path", temp["out"]), "bad archive");
        Assert.False(Path.Exists(temp["out"]));
    }

    [Fact]
    public void Restore_path_refuses_an_existing_target()
    {
        using var temp = new TempDir();
        Directory.CreateDirectory(temp["out"]);
        KilnCli.AssertOneLineError(KilnCli.Run(File.ReadAllBytes(Repo.Golden("nar", "t8.nar")), "nix", "restore-path", temp["out"]), "already exists");
    }

    [Fact]
    public void Show_derivation_of_a_file_outside_the_store_matches_the_golden_json()
    {
        foreach (var file in Directory.GetFiles(Repo.Golden("drv", "store"), "*.drv"))
        {
            Assert.Equal(File.ReadAllText(file + ".json"), KilnCli.Ok("nix", "show-derivation", file).StdoutText);
        }
    }

    [Fact]
    public void Show_and_check_derivation_agree_with_nix_on_freshly_instantiated_derivations()
    {
        NixTool.Require();
        using var temp = new TempDir();
        var nonce = Guid.NewGuid().ToString("N");
        File.WriteAllText(temp["e.nix"], $$"""
            let
              fod = derivation { name = "fod-{{nonce}}"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "x" ];
                outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "{{new string('1', 52)}}"; };
              lib = derivation { name = "lib"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = [ "out" "dev" ]; n = "{{nonce}}"; };
            in derivation {
              name = "app";
              system = "x86_64-linux";
              builder = "${lib.dev}/bin/sh";
              args = [ "-c" "${fod}" ];
              src = {{Hello}};
              text = "quotes \" and \\ and\ttabs";
            }
            """);
        var drv = NixTool.Run("nix-instantiate", temp["e.nix"]).StdoutText.Trim();
        Assert.Equal(NixTool.Run("nix", "show-derivation", drv).StdoutText, KilnCli.Ok("nix", "show-derivation", drv).StdoutText);

        var check = KilnCli.Ok("nix", "check-derivation", drv).StdoutText;
        var outputs = NixTool.Run("nix-store", "-q", "--outputs", drv).StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.All(outputs, output => Assert.Contains(" " + output + "\n", check, StringComparison.Ordinal));
        Assert.Contains("drv " + drv + "\n", check, StringComparison.Ordinal);

        // A copy with one character of the environment changed no longer matches its output paths.
        var tampered = File.ReadAllText(drv).Replace("quotes", "Quotes", StringComparison.Ordinal);
        File.WriteAllText(temp["tampered.drv"], tampered);
        var result = KilnCli.Run("nix", "check-derivation", temp["tampered.drv"]);
        Assert.Equal(1, result.ExitCode);
        Assert.Contains("output 'out'", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Signatures_from_a_generated_key_are_accepted_by_nix()
    {
        NixTool.Require();
        using var temp = new TempDir();
        KilnCli.Ok("nix", "generate-key", "kiln-test-1", "--secret-key-file", temp["sk"], "--public-key-file", temp["pk"]);
        var publicKey = File.ReadAllText(temp["pk"]);
        Assert.Equal(publicKey, NixTool.RunWithInput("nix", File.ReadAllBytes(temp["sk"]), "key", "convert-secret-to-public").StdoutText);
        Assert.Equal(publicKey + "\n", KilnCli.Ok(File.ReadAllBytes(temp["sk"]), "nix", "public-key").StdoutText);
        Assert.Equal(Convert.ToString(Convert.ToInt32("600", 8), 8), Convert.ToString((int)File.GetUnixFileMode(temp["sk"]), 8));

        // An input-addressed path (content-addressed ones are trusted without signatures), built unsandboxed.
        var nonce = Guid.NewGuid().ToString("N");
        var path = NixTool.Run("nix-build", "--no-out-link", "-E",
            $"derivation {{ name = \"signed\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo {nonce} > $out\" ]; }}").StdoutText.Trim();
        var cache = "file://" + temp["cache"];
        NixTool.Run("nix", "copy", "--to", cache + "?compression=none", path);
        var narInfo = temp[Path.Combine("cache", Path.GetFileName(path)[..32] + ".narinfo")];
        Assert.NotEqual(0, NixTool.Try("nix", null, "store", "verify", "--store", cache, "--trusted-public-keys", publicKey, "--no-contents", path).ExitCode);

        var signed = KilnCli.Ok(File.ReadAllBytes(narInfo), "nix", "sign-narinfo", "--key", temp["sk"]).Stdout;
        File.WriteAllBytes(narInfo, signed);
        Assert.Contains("Sig: kiln-test-1:", Encoding.UTF8.GetString(signed), StringComparison.Ordinal);
        NixTool.Run("nix", "store", "verify", "--store", cache, "--trusted-public-keys", publicKey, "--no-contents", path);
        var otherKey = KilnCli.Ok("nix", "generate-key", "kiln-test-1").StdoutText.Trim();
        var otherPublic = KilnCli.Ok(Encoding.UTF8.GetBytes(otherKey), "nix", "public-key").StdoutText.Trim();
        Assert.NotEqual(0, NixTool.Try("nix", null, "store", "verify", "--store", cache, "--trusted-public-keys", otherPublic, "--no-contents", path).ExitCode);
    }

    [Fact]
    public void Ls_nar_prints_the_listing_nix_prints()
    {
        NixTool.Require();
        // Byte for byte, including latin1.nar, whose name is not UTF-8 and appears raw in both outputs.
        foreach (var file in Directory.GetFiles(Repo.Golden("nar"), "*.nar"))
        {
            var nix = NixTool.Run("nix", "nar", "ls", "--json", "-R", file, "/").Stdout;
            Assert.Equal([.. nix, (byte)'\n'], KilnCli.Ok(File.ReadAllBytes(file), "nix", "ls-nar").Stdout);
        }
    }

    [Theory]
    [InlineData(new[] { "nix", "frobnicate" }, null)]
    [InlineData(new[] { "nix", "dump-path" }, null)]
    [InlineData(new[] { "nix", "dump-path", "/does/not/exist" }, "/does/not/exist")]
    [InlineData(new[] { "nix", "dump-path", "/", "/" }, null)]
    [InlineData(new[] { "nix", "dump-path", "--frobnicate" }, null)]
    [InlineData(new[] { "nix", "hash-path", "--type", "blake3", "/" }, "unknown hash algorithm")]
    [InlineData(new[] { "nix", "hash-path", "--base16", "--sri", "/" }, "at most one")]
    [InlineData(new[] { "nix", "show-derivation", "/etc/hostname" }, "is not a derivation")]
    [InlineData(new[] { "nix", "check-derivation", "/does/not/exist.drv" }, null)]
    [InlineData(new[] { "nix", "sign-narinfo", "--key", "/does/not/exist" }, null)]
    [InlineData(new[] { "nix", "generate-key", "bad:name" }, "invalid key name")]
    public void Bad_input_gets_one_line_and_exit_code_1(string[] args, string? message) =>
        KilnCli.AssertOneLineError(KilnCli.Run(args), message);

    [Theory]
    [InlineData("--help")]
    [InlineData("/?")]
    [InlineData("/h")]
    public void Dump_path_still_answers_help(string help) =>
        Assert.Contains("Usage:", KilnCli.Ok("nix", "dump-path", help).StdoutText, StringComparison.Ordinal);

    [Fact]
    public void A_malformed_narinfo_or_key_is_one_line_too()
    {
        using var temp = new TempDir();
        File.WriteAllText(temp["sk"], "not a key");
        KilnCli.AssertOneLineError(KilnCli.Run("StorePath: x\n"u8.ToArray(), "nix", "sign-narinfo", "--key", temp["sk"]), "secret key");
        KilnCli.AssertOneLineError(KilnCli.Run("garbage"u8.ToArray(), "nix", "public-key"), "secret key");
        File.WriteAllText(temp["sk"], File.ReadAllText(Repo.Golden("narinfo", "test-key-1.secret")));
        KilnCli.AssertOneLineError(KilnCli.Run("StorePath: x\n"u8.ToArray(), "nix", "sign-narinfo", "--key", temp["sk"]), "corrupt");
        File.WriteAllText(temp["bad.drv"], "Derive([(\"out\",");
        KilnCli.AssertOneLineError(KilnCli.Run("nix", "show-derivation", temp["bad.drv"]), "error parsing derivation");
        KilnCli.AssertOneLineError(KilnCli.Run("nix", "check-derivation", temp["bad.drv"]), "error parsing derivation");
    }
}
