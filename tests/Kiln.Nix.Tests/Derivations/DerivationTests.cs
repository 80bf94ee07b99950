using System.Text;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Derivations;

/// <summary>Golden .drv files written by nix-instantiate (Nix 2.8), with the JSON nix show-derivation printed for each.</summary>
public class DerivationTests
{
    public static TheoryData<string> GoldenDrvs() =>
        new(Directory.GetFiles(Repo.Golden("drv", "store"), "*.drv").Select(Path.GetFileName).Order()!);

    private static StorePath PathOf(string file) => StorePath.FromBaseName(file);

    private static Derivation Load(string file) =>
        ATerm.Parse(File.ReadAllBytes(Repo.Golden("drv", "store", file)), Derivation.NameFromPath(PathOf(file)));

    private static DerivationHasher GoldenHasher() =>
        new(path => ATerm.Parse(File.ReadAllBytes(Repo.Golden("drv", "store", path.BaseName)), Derivation.NameFromPath(path)));

    [Theory]
    [MemberData(nameof(GoldenDrvs))]
    public void Prints_back_byte_for_byte(string file)
    {
        var bytes = File.ReadAllBytes(Repo.Golden("drv", "store", file));
        Assert.Equal(bytes, ATerm.PrintBytes(Load(file)));
    }

    [Theory]
    [MemberData(nameof(GoldenDrvs))]
    public void Json_matches_nix_show_derivation(string file)
    {
        var writer = new StringWriter { NewLine = "\n" };
        DerivationJson.Write(writer, [(PathOf(file), Load(file))]);
        Assert.Equal(File.ReadAllText(Repo.Golden("drv", "store", file + ".json")), writer.ToString());
    }

    [Theory]
    [MemberData(nameof(GoldenDrvs))]
    public void Computes_the_output_paths_nix_wrote(string file)
    {
        var derivation = Load(file);
        var computed = GoldenHasher().ComputeOutputPaths(derivation);
        Assert.Equal(derivation.Outputs.Keys, computed.Keys);
        foreach (var (name, output) in derivation.Outputs)
        {
            Assert.Equal(output.Path, computed[name]);
        }
    }

    [Theory]
    [MemberData(nameof(GoldenDrvs))]
    public void Computes_the_store_path_of_the_drv_itself(string file) =>
        Assert.Equal(PathOf(file), DerivationHasher.DerivationPath(Load(file)));

    [Fact]
    public void Computes_the_paths_nix_gave_the_sources()
    {
        // Golden/drv/sources.txt: path, NAR hash, references, as recorded by nix-store -q.
        foreach (var line in File.ReadAllLines(Repo.Golden("drv", "sources.txt")))
        {
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            var path = StorePath.Parse(fields[0]);
            var references = fields.Skip(2).Select(StorePath.Parse).ToList();
            var source = Path.Combine(Repo.Golden("drv", "src"), path.Name);
            StorePath computed;
            if (references.Count == 0)
            {
                // A path literal: NAR-hashed source.
                Assert.Equal(fields[1], "sha256:" + Hash(source).ToNix32());
                computed = StorePathComputer.MakeFixedOutputPath(path.Name, ContentAddressMethod.Recursive, Hash(source));
            }
            else
            {
                // builtins.toFile: a text path over its contents, with its references.
                var contents = $"cat {references[0]}\n";
                computed = StorePathComputer.MakeTextPath(path.Name, NixHash.Compute(NixHashAlgorithm.Sha256, contents), references);
            }

            Assert.Equal(path, computed);
        }

        static NixHash Hash(string path)
        {
            using var hashing = new HashingStream(NixHashAlgorithm.Sha256);
            Kiln.Nix.Nar.NarDumper.Dump(path, hashing);
            return hashing.Finish();
        }
    }

    // T9–T11 of docs/nix-protocols.md, built here from scratch rather than parsed.
    [Fact]
    public void Builds_input_addressed_fixed_and_dependent_derivations_from_scratch()
    {
        var foo = new Derivation
        {
            Name = "foo",
            Platform = "x86_64-linux",
            Builder = "/bin/sh",
            Arguments = ["-c", "echo \"hi\\there\" > $out"],
        };
        foo.Outputs["out"] = new DerivationOutput("", "", "");
        foo.Environment["builder"] = "/bin/sh";
        foo.Environment["name"] = "foo";
        foo.Environment["system"] = "x86_64-linux";
        foo.Environment["out"] = "";
        var hasher = new DerivationHasher(_ => throw new InvalidOperationException("no inputs"));
        var fooOut = hasher.ComputeOutputPaths(foo)["out"];
        Assert.Equal("/nix/store/184pz5dk2vpgz5f8aiwvzr6qx5s0d0ji-foo", fooOut);
        foo.Outputs["out"] = new DerivationOutput(fooOut, "", "");
        foo.Environment["out"] = fooOut;
        Assert.Equal(
            "Derive([(\"out\",\"/nix/store/184pz5dk2vpgz5f8aiwvzr6qx5s0d0ji-foo\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[\"-c\",\"echo \\\"hi\\\\there\\\" > $out\"],[(\"builder\",\"/bin/sh\"),(\"name\",\"foo\"),(\"out\",\"/nix/store/184pz5dk2vpgz5f8aiwvzr6qx5s0d0ji-foo\"),(\"system\",\"x86_64-linux\")])",
            ATerm.Print(foo));
        var fooDrv = DerivationHasher.DerivationPath(foo);
        Assert.Equal("/nix/store/0r44ha39vj6hfc5b9m87rbvszw9ymffc-foo.drv", fooDrv.FullPath);

        var fod = new Derivation
        {
            Name = "fod",
            Platform = "x86_64-linux",
            Builder = "/bin/sh",
            Arguments = ["-c", "echo hello > $out"],
        };
        fod.Outputs["out"] = new DerivationOutput("", "sha256", "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
        var fodOut = hasher.ComputeOutputPaths(fod)["out"];
        Assert.Equal("/nix/store/rcz8aqa9lzcygdcn1q53xz03vc3svrcp-fod", fodOut);
        fod.Outputs["out"] = fod.Outputs["out"] with { Path = fodOut };
        foreach (var (key, value) in new Dictionary<string, string>
        {
            ["builder"] = "/bin/sh",
            ["name"] = "fod",
            ["out"] = fodOut,
            ["outputHash"] = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
            ["outputHashAlgo"] = "sha256",
            ["outputHashMode"] = "flat",
            ["system"] = "x86_64-linux",
        })
        {
            fod.Environment[key] = value;
        }

        var fodDrv = DerivationHasher.DerivationPath(fod);
        Assert.Equal("/nix/store/3mk786rjnkjac12azzzj3fdjg40gm7nb-fod.drv", fodDrv.FullPath);

        var dep = new Derivation
        {
            Name = "dep",
            Platform = "x86_64-linux",
            Builder = "/bin/sh",
            Arguments = ["-c", $"cat {fodOut} {fooOut} > $out; touch $dev"],
        };
        dep.InputDerivations[fooDrv] = new SortedSet<string> { "out" };
        dep.InputDerivations[fodDrv] = new SortedSet<string> { "out" };
        dep.Outputs["out"] = new DerivationOutput("", "", "");
        dep.Outputs["dev"] = new DerivationOutput("", "", "");
        foreach (var (key, value) in new Dictionary<string, string>
        {
            ["builder"] = "/bin/sh",
            ["name"] = "dep",
            ["out"] = "",
            ["dev"] = "",
            ["outputs"] = "out dev",
            ["system"] = "x86_64-linux",
        })
        {
            dep.Environment[key] = value;
        }

        var byPath = new Dictionary<StorePath, Derivation> { [fooDrv] = foo, [fodDrv] = fod };
        var depPaths = new DerivationHasher(p => byPath[p]).ComputeOutputPaths(dep);
        Assert.Equal("/nix/store/jlkh51q5ainrzz4lpj9q0r0phyv7x5wm-dep", depPaths["out"]);
        Assert.Equal("/nix/store/mblsizf4wf75661r1rpm3fg18yn64b48-dep-dev", depPaths["dev"]);
        foreach (var (name, path) in depPaths)
        {
            dep.Outputs[name] = new DerivationOutput(path, "", "");
            dep.Environment[name] = path;
        }

        Assert.Equal("/nix/store/xk59lzxzs10lm7bm41yymlbmzpg7gqym-dep.drv", DerivationHasher.DerivationPath(dep).FullPath);
    }

    [Theory]
    [InlineData("", "expected string 'Derive('")]
    [InlineData("Derive([", "expected string '('")]
    [InlineData("Derive([(\"out\",\"/nix/store/184pz5dk2vpgz5f8aiwvzr6qx5s0d0ji-foo\",\"\",\"\")],[],[],\"x\",\"b\",[],[])trailing", "trailing data")]
    [InlineData("Derive([(\"out\",\"/tmp/foo\",\"\",\"\")],[],[],\"x\",\"b\",[],[])", "bad path '/tmp/foo'")]
    [InlineData("Derive([],[(\"/nix/store/184pz5dk2vpgz5f8aiwvzr6qx5s0d0ji-foo.drv\",[\"out\"])],[\"not-a-path\"],\"x\",\"b\",[],[])", "bad path 'not-a-path'")]
    [InlineData("Derive([],[],[],\"x\",\"b\",[],[(\"a\",\"1\"),(\"a\",\"2\")])", "duplicate environment variable 'a'")]
    [InlineData("Derive([],[],[],\"unterminated", "unterminated string")]
    [InlineData("Derive([],[],[],\"x\\", "unterminated string")]
    [InlineData("DrvWithVersion(\"xp-dyn-drv\",[],[],[],\"x\",\"b\",[],[])", "dynamic derivations")]
    [InlineData("Derive([],[],[],\"x\",\"b\",[],[]", "expected string ')'")]
    public void Refuses_malformed_derivations(string text, string message)
    {
        var error = Assert.Throws<DerivationFormatException>(() => ATerm.Parse(text, "x"));
        Assert.Contains(message, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Bytes_that_are_not_utf8_round_trip()
    {
        byte[] drv = [.. "Derive([],[],[],\"x86_64-linux\",\"/bin/sh\",[\"caf"u8, 0xe9, .. "\"],[(\"v\",\""u8, 0xff, 0xfe, .. "\")])"u8];
        var derivation = ATerm.Parse(drv, "x");
        Assert.Equal(drv, ATerm.PrintBytes(derivation));
        Assert.Equal([0xff, 0xfe], NixString.Encode(derivation.Environment["v"]));
    }

    [Fact]
    public void The_platform_is_printed_unescaped_as_nix_does()
    {
        // Nix 2.4+ prints the platform with printUnquotedString; the builder, arguments and environment are escaped.
        var derivation = new Derivation { Name = "x", Platform = "odd\\platform", Builder = "a\"b" };
        Assert.Equal("Derive([],[],[],\"odd\\platform\",\"a\\\"b\",[],[])", ATerm.Print(derivation));
    }

    [Fact]
    public void Random_derivations_round_trip()
    {
        var random = new Random(4242);
        for (var i = 0; i < 300; i++)
        {
            var derivation = RandomDerivation(random);
            var text = ATerm.Print(derivation);
            var parsed = ATerm.Parse(Encoding.UTF8.GetBytes(text), derivation.Name);
            Assert.Equal(text, ATerm.Print(parsed));
            Assert.Equal(derivation.Arguments, parsed.Arguments);
            Assert.Equal(derivation.Environment, parsed.Environment);
        }
    }

    private static readonly string[] Pieces = ["a", "\"", "\\", "\n", "\r", "\t", "ü", "😀", "$out", " ", ",", "(", ")", "[", "]", "\\n", "\0", "\u0001", "x y"];

    internal static string RandomText(Random random) =>
        string.Concat(Enumerable.Range(0, random.Next(0, 8)).Select(_ => Pieces[random.Next(Pieces.Length)]));

    private static Derivation RandomDerivation(Random random)
    {
        var derivation = new Derivation
        {
            Name = "random",

            // Nix prints the platform unescaped, so only text without quotes or backslashes round-trips (in Nix too).
            Platform = RandomText(random).Replace("\"", "", StringComparison.Ordinal).Replace("\\", "", StringComparison.Ordinal),
            Builder = RandomText(random),
            Arguments = Enumerable.Range(0, random.Next(0, 5)).Select(_ => RandomText(random)).ToList(),
        };
        for (var i = random.Next(1, 4); i > 0; i--)
        {
            var hash = new byte[20];
            random.NextBytes(hash);
            derivation.Outputs["o" + i] = new DerivationOutput(StorePath.FromHash(hash, "random-o" + i).FullPath, "", "");
        }

        for (var i = random.Next(0, 6); i > 0; i--)
        {
            derivation.Environment[RandomText(random) + i] = RandomText(random);
        }

        for (var i = random.Next(0, 3); i > 0; i--)
        {
            var hash = new byte[20];
            random.NextBytes(hash);
            derivation.InputSources.Add(StorePath.FromHash(hash, "src" + i));
            random.NextBytes(hash);
            derivation.InputDerivations[StorePath.FromHash(hash, "in" + i + ".drv")] = new SortedSet<string>(Utf8Order.Comparer) { "out", "dev" };
        }

        return derivation;
    }
}
