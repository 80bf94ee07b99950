using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>Builds Nix expressions and source trees in a client's workspace, and reads <c>nix path-info --json</c>.</summary>
public static class Closure
{
    /// <summary>
    /// Writes sources (incompressible files, a tree of small files) and an expression whose top derivation's closure
    /// holds <paramref name="chain"/> derivations, as many <c>builtins.toFile</c> texts, and the sources. Returns the
    /// expression's path inside the chroot.
    /// </summary>
    public static string Write(NixClient client, string workspace, int chain, int bigFiles = 2, int bigFileSize = 256 * 1024, int seed = 1)
    {
        var random = new Random(seed);
        var src = client.HostPath($"{workspace}/src");
        Directory.CreateDirectory(Path.Combine(src, "tree", "sub"));
        for (var i = 0; i < bigFiles; i++)
        {
            var data = new byte[bigFileSize];
            random.NextBytes(data);
            File.WriteAllBytes(Path.Combine(src, $"big{i}"), data);
        }

        for (var i = 0; i < 40; i++)
        {
            File.WriteAllText(Path.Combine(src, "tree", i % 2 == 0 ? "sub" : ".", $"f{i}.txt"), new string('x', random.Next(0, 3000)));
        }

        File.WriteAllText(Path.Combine(src, "tree", "run.sh"), "#!/bin/sh\necho hi\n");
        File.SetUnixFileMode(Path.Combine(src, "tree", "run.sh"), (UnixFileMode)Convert.ToInt32("755", 8));

        var sources = string.Join(" ", Enumerable.Range(0, bigFiles).Select(i => $"./src/big{i}").Append("./src/tree"));
        var nix = new StringBuilder();
        nix.Append(CultureInfo.InvariantCulture, $$"""
            let
              sources = [ {{sources}} ];
              step = i: prev: derivation {
                name = "chain-${toString i}";
                system = "x86_64-linux";
                builder = "/bin/sh";
                args = [ "-c" "true" ];
                inherit prev;
                src = builtins.elemAt sources (i - (i / {{bigFiles + 1}}) * {{bigFiles + 1}});
                note = builtins.toFile "note-${toString i}" "step ${toString i} of seed {{seed}}";
              };
              go = i: prev: if i > {{chain}} then prev else go (i + 1) (step i prev);
            in go 1 ""
            """);
        File.WriteAllText(client.HostPath($"{workspace}/closure.nix"), nix.ToString());
        return $"{workspace}/closure.nix";
    }

    /// <summary>path → NAR hash (in SRI or prefixed form, normalised to nix32) from <c>nix path-info --json</c> of any version.</summary>
    public static Dictionary<string, string> NarHashes(string json)
    {
        using var document = JsonDocument.Parse(json);
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        if (document.RootElement.ValueKind == JsonValueKind.Array)
        {
            foreach (var entry in document.RootElement.EnumerateArray())
            {
                result[entry.GetProperty("path").GetString()!] = Normalise(entry.GetProperty("narHash").GetString()!);
            }
        }
        else
        {
            foreach (var entry in document.RootElement.EnumerateObject())
            {
                if (entry.Value.ValueKind == JsonValueKind.Object)
                {
                    result[entry.Name] = Normalise(entry.Value.GetProperty("narHash").GetString()!);
                }
            }
        }

        return result;
    }

    private static string Normalise(string hash) => Kiln.Nix.Hashing.NixHash.ParseAnyPrefixed(hash).ToString();
}
