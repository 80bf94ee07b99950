using System.Security.Cryptography;
using System.Text;
using Kiln.Nix;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Agent;

/// <summary>
/// The environment and the files in <c>/build</c> a builder starts with, as Nix's sandboxed builder sets them
/// (<c>initEnv</c>/<c>initTmpDir</c> in Nix's derivation builder): Nix's defaults, then the derivation's variables
/// (which may override PATH, HOME, NIX_STORE and NIX_BUILD_CORES but nothing after them), then the build directory
/// variables, fixed-output extras, NIX_LOG_FD and TERM. <c>passAsFile</c>, structured attributes and
/// <c>exportReferencesGraph</c> become files. Output placeholders are replaced by the output paths everywhere.
/// </summary>
internal sealed class BuildEnvironment
{
    public const string BuildDirectory = "/build";
    public const string StoreDirectory = "/nix/store";

    private BuildEnvironment(SortedDictionary<string, string> variables, List<(string Name, byte[] Contents)> files,
        Dictionary<string, string> rewrites, StructuredAttributes? structured)
    {
        Variables = variables;
        Files = files;
        Rewrites = rewrites;
        Structured = structured;
    }

    /// <summary>Output placeholder → output path, applied to the environment, the files, the builder and its arguments.</summary>
    public IReadOnlyDictionary<string, string> Rewrites { get; }

    /// <summary>The derivation's structured attributes, parsed once, or null when it has none.</summary>
    public StructuredAttributes? Structured { get; }

    /// <summary>Name → value, in the byte order Nix passes them to the builder.</summary>
    public SortedDictionary<string, string> Variables { get; }

    /// <summary>Files to create in the build directory before the builder starts.</summary>
    public IReadOnlyList<(string Name, byte[] Contents)> Files { get; }

    /// <summary>Placeholder → output path for each output (Nix's <c>hashPlaceholder</c>).</summary>
    private static Dictionary<string, string> OutputRewrites(Derivation derivation)
    {
        var rewrites = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, output) in derivation.Outputs)
        {
            if (output.Path.Length > 0)
            {
                rewrites["/" + Nix32.Encode(SHA256.HashData(Encoding.UTF8.GetBytes("nix-output:" + name)))] = output.Path;
            }
        }

        return rewrites;
    }

    /// <param name="job">The build.</param>
    /// <param name="impureVariables">Values for a fixed-output derivation's <c>impureEnvVars</c>, as the operator configured them; names not there are set to "".</param>
    /// <exception cref="BuildSetupException">The derivation's attributes are malformed (Nix's InputRejected).</exception>
    public static BuildEnvironment Create(BuildJob job, IReadOnlyDictionary<string, string> impureVariables)
    {
        var derivation = job.Derivation;
        var rewrites = OutputRewrites(derivation);
        string Rewrite(string value) => RewriteStrings(value, rewrites);

        var env = new SortedDictionary<string, string>(Utf8Order.Comparer)
        {
            ["PATH"] = "/path-not-set",
            ["HOME"] = "/homeless-shelter",
            ["NIX_STORE"] = StoreDirectory,
            ["NIX_BUILD_CORES"] = job.Limits.Cores.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        var files = new List<(string Name, byte[] Contents)>();

        var structured = derivation.HasStructuredAttributes ? StructuredAttributes.Parse(derivation) : null;
        if (structured is null)
        {
            var passAsFile = Tokens(derivation.Environment.GetValueOrDefault("passAsFile", "")).ToHashSet(StringComparer.Ordinal);
            foreach (var (name, value) in derivation.Environment)
            {
                if (!passAsFile.Contains(name))
                {
                    env[name] = value;
                }
                else
                {
                    var file = ".attr-" + Nix32.Encode(SHA256.HashData(NixString.Encode(name)));
                    files.Add((file, NixString.Encode(Rewrite(value))));
                    env[name + "Path"] = BuildDirectory + "/" + file;
                }
            }
        }

        foreach (var name in new[] { "NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD" })
        {
            env[name] = BuildDirectory;
        }

        if (derivation.IsFixedOutput)
        {
            env["NIX_OUTPUT_CHECKED"] = "1";
            var impure = structured is null
                ? Tokens(derivation.Environment.GetValueOrDefault("impureEnvVars", ""))
                : structured.GetStrings("impureEnvVars") ?? [];
            foreach (var name in impure)
            {
                env[name] = impureVariables.GetValueOrDefault(name, "");
            }
        }

        env["NIX_LOG_FD"] = "2";
        env["TERM"] = "xterm-256color";

        var graphs = ReferenceGraphs(job, structured);
        if (structured is null)
        {
            foreach (var (name, paths) in graphs)
            {
                files.Add((name, Encoding.UTF8.GetBytes(Registration(paths))));
            }
        }
        else
        {
            files.Add((".attrs.json", NixString.Encode(Rewrite(structured.ToJson(derivation, graphs)))));
            files.Add((".attrs.sh", NixString.Encode(Rewrite(structured.ToShell(derivation)))));
            // Where Nix ≥ 2.15 points them (2.8–2.14 pointed at the host's temporary directory, a known bug).
            env["NIX_ATTRS_JSON_FILE"] = BuildDirectory + "/.attrs.json";
            env["NIX_ATTRS_SH_FILE"] = BuildDirectory + "/.attrs.sh";
        }

        var rewritten = new SortedDictionary<string, string>(Utf8Order.Comparer);
        foreach (var (name, value) in env)
        {
            rewritten[name] = Rewrite(value);
        }

        return new BuildEnvironment(rewritten, files, rewrites, structured);
    }

    public static string RewriteStrings(string value, IReadOnlyDictionary<string, string> rewrites)
    {
        foreach (var (from, to) in rewrites)
        {
            if (value.Contains(from, StringComparison.Ordinal))
            {
                value = value.Replace(from, to, StringComparison.Ordinal);
            }
        }

        return value;
    }

    /// <summary>Nix's <c>tokenizeString</c> on whitespace.</summary>
    public static IEnumerable<string> Tokens(string value) =>
        value.Split([' ', '\t', '\n', '\r'], StringSplitOptions.RemoveEmptyEntries);

    // exportReferencesGraph: file name → the closure of the named paths (which must be inputs), in store order.
    private static List<(string Name, IReadOnlyList<BuildInput> Paths)> ReferenceGraphs(BuildJob job, StructuredAttributes? structured)
    {
        var pairs = new List<(string Name, IReadOnlyList<string> Paths)>();
        if (structured is not null)
        {
            pairs.AddRange(structured.ExportReferencesGraph());
        }
        else if (job.Derivation.Environment.TryGetValue("exportReferencesGraph", out var spec))
        {
            var tokens = Tokens(spec).ToList();
            if (tokens.Count % 2 != 0)
            {
                throw new BuildSetupException($"odd number of tokens in 'exportReferencesGraph': '{spec}'");
            }

            for (var i = 0; i < tokens.Count; i += 2)
            {
                var name = tokens[i];
                if (!IsValidGraphFileName(name))
                {
                    throw new BuildSetupException($"invalid file name '{name}' in 'exportReferencesGraph'");
                }

                pairs.Add((name, [tokens[i + 1]]));
            }
        }

        var inputs = job.Inputs.ToDictionary(i => i.Path);
        var result = new List<(string, IReadOnlyList<BuildInput>)>();
        foreach (var (name, paths) in pairs)
        {
            var closure = new SortedDictionary<StorePath, BuildInput>();
            foreach (var text in paths)
            {
                if (!StorePath.TryParse(text, out var path))
                {
                    throw new BuildSetupException($"'exportReferencesGraph' contains a non-store path '{text}'");
                }

                if (!inputs.ContainsKey(path))
                {
                    throw new BuildSetupException($"cannot export references of path '{path}' because it is not in the input closure of the derivation");
                }

                var reachable = StorePathGraph.Closure(path, p => inputs.TryGetValue(p, out var input) ? input.References : null);
                foreach (var reached in reachable)
                {
                    if (inputs.TryGetValue(reached, out var input))
                    {
                        closure.TryAdd(reached, input);
                    }
                }
            }

            result.Add((name, closure.Values.ToList()));
        }

        return result;
    }

    private static bool IsValidGraphFileName(string name) =>
        name.Length > 0 && (char.IsAsciiLetter(name[0]) || name[0] == '_') &&
        name.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-');

    // Nix's makeValidityRegistration without hashes or derivers: path, empty deriver, reference count, references.
    private static string Registration(IReadOnlyList<BuildInput> paths)
    {
        var text = new StringBuilder();
        foreach (var input in paths)
        {
            text.Append(input.Path.FullPath).Append("\n\n").Append(input.References.Count).Append('\n');
            foreach (var reference in input.References.Order())
            {
                text.Append(reference.FullPath).Append('\n');
            }
        }

        return text.ToString();
    }
}

/// <summary>A derivation cannot be set up as written (Nix reports these as InputRejected).</summary>
public sealed class BuildSetupException(string message) : Exception(message);
