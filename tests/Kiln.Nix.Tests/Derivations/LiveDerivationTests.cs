using System.Globalization;
using System.Text;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Derivations;

/// <summary>
/// Random Nix expressions (fixed seed) instantiated by the real nix-instantiate: derivations no test was written for.
/// Kiln must print each .drv back byte for byte, compute its path and its output paths, and print the same JSON.
/// </summary>
public class LiveDerivationTests
{
    [Fact]
    public void Agrees_with_nix_instantiate_on_random_expressions()
    {
        NixTool.Require();
        var random = new Random(1121);
        using var temp = new TempDir();
        // Nix strings are bytes: some derivations carry a file's bytes that are not UTF-8.
        var raw = new byte[200];
        random.NextBytes(raw);
        File.WriteAllBytes(temp["raw.bin"], raw.Select(b => b == 0 ? (byte)0xe9 : b).ToArray());
        var expression = RandomExpression(random, count: 40, temp["raw.bin"]);
        File.WriteAllText(temp["random.nix"], expression);
        var drvPaths = NixTool.Run("nix-instantiate", temp["random.nix"]).StdoutText
            .Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(line => StorePath.Parse(line.Split('!')[0]))
            .Distinct()
            .ToList();
        Assert.Equal(40, drvPaths.Count);
        var hasher = DerivationHasher.ForLocalStore();
        foreach (var drvPath in drvPaths)
        {
            var bytes = File.ReadAllBytes(drvPath.FullPath);
            var derivation = ATerm.Parse(bytes, Derivation.NameFromPath(drvPath));
            Assert.Equal(bytes, ATerm.PrintBytes(derivation));
            Assert.Equal(drvPath, DerivationHasher.DerivationPath(derivation));
            var computed = hasher.ComputeOutputPaths(derivation);
            foreach (var (name, output) in derivation.Outputs)
            {
                Assert.Equal(output.Path, computed[name]);
            }

            var json = new StringWriter { NewLine = "\n" };
            DerivationJson.Write(json, [(drvPath, derivation)]);
            Assert.Equal(NixTool.Run("nix", "show-derivation", drvPath.FullPath).Stdout, NixString.Encode(json.ToString()));
        }
    }

    private static readonly string[] Algorithms = ["md5", "sha1", "sha256", "sha512"];

    private static string RandomExpression(Random random, int count, string rawFile)
    {
        var s = new StringBuilder("let\n");
        for (var i = 0; i < count; i++)
        {
            s.Append(CultureInfo.InvariantCulture, $"  d{i} = derivation {{\n");
            s.Append(CultureInfo.InvariantCulture, $"    name = \"r{i}-{random.Next(1000)}\";\n    system = \"x86_64-linux\";\n");
            s.Append(CultureInfo.InvariantCulture, $"    builder = {Quote("/bin/" + RandomText(random))};\n");
            var args = Enumerable.Range(0, random.Next(0, 4)).Select(_ => Quote(RandomText(random)));
            s.Append(CultureInfo.InvariantCulture, $"    args = [ {string.Join(" ", args)} ];\n");
            for (var j = random.Next(0, 5); j > 0; j--)
            {
                s.Append(CultureInfo.InvariantCulture, $"    attr{j} = {Quote(RandomText(random))};\n");
            }

            var kind = random.Next(6);
            if (kind == 0)
            {
                var algorithm = Algorithms[random.Next(Algorithms.Length)];
                var digest = new byte[NixHashAlgorithms.Parse(algorithm).Size()];
                random.NextBytes(digest);
                var mode = random.Next(2) == 0 ? "flat" : "recursive";
                s.Append(CultureInfo.InvariantCulture, $"    outputHashMode = \"{mode}\";\n    outputHashAlgo = \"{algorithm}\";\n    outputHash = \"{Convert.ToHexStringLower(digest)}\";\n");
            }
            else if (kind == 1)
            {
                var outputs = new[] { "out", "dev", "lib", "bin", "man" }.Where(_ => random.Next(2) == 0).Prepend("out").Distinct();
                s.Append(CultureInfo.InvariantCulture, $"    outputs = [ {string.Join(" ", outputs.OrderBy(_ => random.Next()).Select(o => $"\"{o}\""))} ];\n");
            }
            else if (kind == 2)
            {
                s.Append("    passAsFile = [ \"big\" ];\n    big = ").Append(Quote(RandomText(random) + RandomText(random))).Append(";\n");
            }
            else if (kind == 4)
            {
                s.Append(CultureInfo.InvariantCulture, $"    raw = builtins.readFile {rawFile};\n");
            }
            else if (kind == 3)
            {
                s.Append("    __structuredAttrs = true;\n    nested = { x = [ 1 2 ").Append(Quote(RandomText(random))).Append(" ]; y = true; };\n");
            }

            // Depend on earlier derivations, sometimes on a non-default output.
            for (var j = random.Next(0, Math.Min(i, 3) + 1); j > 0 && i > 0; j--)
            {
                var dependency = random.Next(i);
                s.Append(CultureInfo.InvariantCulture, $"    dep{j} = d{dependency};\n");
            }

            s.Append("  };\n");
        }

        s.Append("in [ ");
        for (var i = 0; i < count; i++)
        {
            s.Append(CultureInfo.InvariantCulture, $"d{i} ");
        }

        return s.Append("]\n").ToString();
    }

    private static readonly string[] Pieces = ["a", "\"", "\\", "\n", "\r", "\t", "ü", "日本", "😀", "$out", "$", "{", "}", " ", ",", "(", ")", "[", "]", "'", "\u0001", "x"];

    private static string RandomText(Random random) =>
        string.Concat(Enumerable.Range(0, random.Next(0, 10)).Select(_ => Pieces[random.Next(Pieces.Length)]));

    // A Nix string literal.
    private static string Quote(string text)
    {
        var s = new StringBuilder("\"");
        foreach (var c in text)
        {
            s.Append(c switch
            {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '$' => "\\$",
                _ => c.ToString(),
            });
        }

        return s.Append('"').ToString();
    }
}
