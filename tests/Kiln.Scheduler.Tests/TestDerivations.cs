using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;
using Kiln.Store;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// Input-addressed derivations written into an account's view the way evaluation writes them (AddTextToStore), each
/// depending on the "out" outputs of its inputs; the written ones are remembered so later ones can hash over them.
/// </summary>
internal sealed class TestDerivations(KilnStore store)
{
    private readonly Dictionary<StorePath, Derivation> _written = [];

    public Derivation this[StorePath drvPath] => _written[drvPath];

    public async Task<StorePath> WriteAsync(string account, string name, params StorePath[] inputs)
    {
        var derivation = new Derivation { Name = name, Platform = "x86_64-linux", Builder = "/bin/sh" };
        derivation.Outputs["out"] = new DerivationOutput("", "", "");
        derivation.Environment["name"] = name;
        derivation.Environment["out"] = "";
        foreach (var input in inputs)
        {
            derivation.InputDerivations[input] = new SortedSet<string> { "out" };
        }

        var path = new DerivationHasher(p => _written[p]).ComputeOutputPaths(derivation)["out"];
        derivation.Outputs["out"] = new DerivationOutput(path, "", "");
        derivation.Environment["out"] = path;
        using var view = await store.OpenViewAsync(account, default);
        var info = await view.AddContentAddressedAsync($"{name}.drv", ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
            new MemoryStream(ATerm.PrintBytes(derivation)), new SortedSet<StorePath>(inputs), false, default);
        _written[info.Path] = derivation;
        return info.Path;
    }
}
