using System.Text.Json;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests.Fidelity;

/// <summary>
/// Each derivation of <c>corpus.nix</c> is built by stock Nix 2.8 with its sandbox on (in a store of its own) and by
/// Kiln: both must succeed or fail the same way, and successful outputs must have identical NAR hashes and
/// references (the probe's output holds what the builder saw: environment, identity, /etc, network, store, /build).
/// </summary>
public class FidelityTests
{
    public static TheoryData<string> Corpus() =>
    [
        "single", "multi", "multi-cycle", "uses-dep", "pass-as-file", "structured", "graph", "modes", "setuid", "fixed-flat", "fixed-recursive",
        "fixed-wrong", "refs-allowed", "refs-refused", "refs-disallowed", "fails", "loud", "no-output", "probe",
        "fetchurl", "fetchurl-wrong", "fetch-shell", "fetch-no-network", "silent", "slow",
    ];

    // Cases stock Nix must build: a mistake in the test's inputs must not pass as two identical failures.
    private static readonly HashSet<string> MustBuild = ["fetchurl", "fetch-shell", "probe", "single", "setuid"];

    // Cases stock Nix must refuse: a limit or check the reference ignored would otherwise pass as two successes.
    private static readonly HashSet<string> MustFail =
        ["fixed-wrong", "refs-refused", "refs-disallowed", "fails", "loud", "no-output", "fetchurl-wrong", "fetch-no-network", "silent", "slow"];

    // Limits given on the command line, for the cases about them.
    private static readonly Dictionary<string, string[]> Options = new()
    {
        ["silent"] = ["--option", "max-silent-time", "2"],
        ["slow"] = ["--option", "timeout", "2"],
        ["loud"] = ["--option", "max-build-log-size", "1000"],
    };

    private static readonly Lazy<(TempDir Dir, string Workspace, string[] Arguments)> Shared = new(() =>
    {
        var dir = new TempDir();
        AppDomain.CurrentDomain.ProcessExit += (_, _) => dir.Dispose(); // shared by every case, so removed at the end
        var workspace = dir["work"];
        Directory.CreateDirectory(Path.Combine(workspace, "bb", "bin"));
        File.Copy("/bin/busybox", Path.Combine(workspace, "bb", "bin", "busybox"));
        File.CreateSymbolicLink(Path.Combine(workspace, "bb", "bin", "sh"), "busybox");
        File.Copy(Path.Combine(AppContext.BaseDirectory, "Fidelity", "corpus.nix"), Path.Combine(workspace, "corpus.nix"));

        // What the fetching cases fetch, from a plain HTTP server on an address of this host that Kiln is told to let
        // fixed-output builds reach (loopback it never lets them); its hashes as stock Nix computes them.
        var served = Path.Combine(dir.Path, "served");
        Directory.CreateDirectory(served);
        File.WriteAllText(Path.Combine(served, "greeting.txt"), "fetched over http\n");
        var flat = Processes.Run("nix-hash", ["--type", "sha256", "--flat", Path.Combine(served, "greeting.txt")]).StdoutText.Trim();
        var recursive = Processes.Run("nix-hash", ["--type", "sha256", "--base32", served]).StdoutText.Trim();
        var port = HttpServer.Start(served, TestAddresses.Allowed);
        return (dir, workspace, ["--argstr", "fetchBase", $"http://{TestAddresses.Allowed}:{port}", "--argstr", "fetchFlat", flat, "--argstr", "fetchRecursive", recursive]);
    });

    private static readonly Dictionary<string, string> Environment = new()
    {
        // Build users (nixbld, made by setup-clients.sh), as a stock multi-user Nix machine has.
        ["NIX_CONFIG"] = "experimental-features = nix-command\nbuild-users-group = nixbld\nsubstituters = \nsandbox = true\nsandbox-paths = \n",
        ["NIX_REMOTE"] = "",
        ["HOME"] = "/tmp",
    };

    private static ProcessResult Nix(string workspace, params string[] args) =>
        Processes.Run(args[0], args[1..], environment: Environment, workingDirectory: workspace);

    [Theory]
    [MemberData(nameof(Corpus))]
    public void A_derivation_builds_on_Kiln_as_on_stock_Nix_with_its_sandbox(string attribute)
    {
        NixClient.RequireEndToEnd();
        var workspace = Shared.Value.Workspace;
        using var kiln = new KilnProcess(arguments: ["--fod-allow-network", $"{TestAddresses.Allowed}/32"]);
        var reference = Path.Combine(workspace, $"ref-{attribute}");
        var kilnStore = $"unix://{kiln.SocketPath}?root={kiln.StoreRoot}";

        var (nixOk, nixError, nixOutputs) = Build(workspace, reference, attribute);
        var (kilnOk, kilnError, kilnOutputs) = Build(workspace, kilnStore, attribute);

        Assert.True(nixOk || !MustBuild.Contains(attribute), $"stock Nix failed to build '{attribute}': {nixError}");
        Assert.False(nixOk && MustFail.Contains(attribute), $"stock Nix built '{attribute}', which must fail");
        Assert.True(nixOk == kilnOk, $"stock Nix {(nixOk ? "built" : "failed")}, Kiln {(kilnOk ? "built" : "failed")}:\nNix: {nixError}\nKiln: {kilnError}\n{kiln.Log}");
        if (!nixOk)
        {
            Assert.True(FailureClass(nixError) == FailureClass(kilnError), $"Nix and Kiln failed differently:\nNix: {nixError}\nKiln: {kilnError}\n{kiln.Log}");
            return;
        }

        Assert.Equal(nixOutputs.Keys.Order(), kilnOutputs.Keys.Order());
        foreach (var (path, (narHash, references)) in nixOutputs)
        {
            var (kilnHash, kilnReferences) = kilnOutputs[path];
            var detail = attribute == "probe" || narHash != kilnHash
                ? $"\nNix's output:\n{Show(reference + path)}\nKiln's output:\n{Show(kiln.StoreRoot + path)}"
                : "";
            Assert.True(narHash == kilnHash, $"{path}: NAR hash {kilnHash} on Kiln, {narHash} on Nix{detail}");
            Assert.Equal(references, kilnReferences);
        }
    }

    private static string Show(string path) =>
        File.Exists(path) ? File.ReadAllText(path) : Directory.Exists(path) ? string.Join("\n", Directory.GetFileSystemEntries(path)) : "(missing)";

    // Builds the attribute in a store; returns success, the error output, and each output's NAR hash and references.
    private static (bool Ok, string Error, Dictionary<string, (string NarHash, string References)> Outputs) Build(string workspace, string store, string attribute)
    {
        var instantiate = Nix(workspace, ["nix-instantiate", "--store", store, "corpus.nix", "--arg", "bb", "./bb", .. Shared.Value.Arguments, "-A", attribute]);
        Assert.True(instantiate.ExitCode == 0, instantiate.Stderr);
        var drv = instantiate.StdoutText.Trim();
        var realise = Nix(workspace, ["nix-store", "--store", store, "--realise", drv, .. Options.GetValueOrDefault(attribute, [])]);
        if (realise.ExitCode != 0)
        {
            return (false, realise.Stderr, []);
        }

        var outputs = realise.StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var info = Nix(workspace, ["nix", "path-info", "--store", store, "--json", .. outputs]);
        Assert.True(info.ExitCode == 0, info.Stderr);
        using var json = JsonDocument.Parse(info.StdoutText);
        var result = new Dictionary<string, (string, string)>();
        foreach (var entry in json.RootElement.EnumerateArray())
        {
            var references = string.Join(" ", entry.GetProperty("references").EnumerateArray().Select(r => r.GetString()).Order());
            result[entry.GetProperty("path").GetString()!] = (entry.GetProperty("narHash").GetString()!, references);
        }

        return (true, realise.Stderr, result);
    }

    // What kind of failure an error message describes, by the phrases Nix's messages contain.
    private static string FailureClass(string error) =>
        new[] { "failed with exit code", "hash mismatch in fixed-output derivation", "is not allowed to refer to", "failed to produce output path", "timed out", "cycle detected", "bytes of log output" }
            .FirstOrDefault(phrase => error.Contains(phrase, StringComparison.Ordinal)) ?? error;
}
