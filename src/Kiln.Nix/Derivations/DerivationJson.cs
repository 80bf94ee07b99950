using Kiln.Nix.Json;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Derivations;

/// <summary>
/// The JSON that Nix 2.8's <c>nix show-derivation</c> prints (<c>src/nix/show-derivation.cc</c> at 2.8.0): an object
/// keyed by .drv path, each with <c>outputs</c> (<c>path</c>; plus <c>hashAlgo</c> and base16 <c>hash</c> for fixed outputs;
/// <c>hashAlgo</c> alone for floating ones; <c>impure: true</c> for impure ones), <c>inputSrcs</c>, <c>inputDrvs</c>,
/// <c>system</c>, <c>builder</c>, <c>args</c>, <c>env</c>; indented by two spaces and followed by a newline.
/// </summary>
public static class DerivationJson
{
    /// <summary>Writes the <c>nix show-derivation</c> document for the given derivations.</summary>
    public static void Write(TextWriter output, IEnumerable<(StorePath DrvPath, Derivation Derivation)> derivations)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(derivations);
        var json = new NixJsonWriter(output, indent: true);
        json.BeginObject();
        foreach (var (drvPath, derivation) in derivations)
        {
            json.Key(drvPath.FullPath);
            WriteDerivation(json, derivation);
        }

        json.EndObject();
        output.Write('\n');
    }

    private static void WriteDerivation(NixJsonWriter json, Derivation derivation)
    {
        json.BeginObject();
        json.Key("outputs");
        json.BeginObject();
        foreach (var (outputName, output) in derivation.Outputs)
        {
            json.Key(outputName);
            json.BeginObject();
            switch (output.Kind)
            {
                case DerivationOutputKind.InputAddressed:
                    json.Member("path", output.Path);
                    break;
                case DerivationOutputKind.Fixed:
                    var ca = output.FixedHash;
                    json.Member("path", StorePathComputer.MakeFixedOutputPath(
                        StorePathComputer.OutputPathName(derivation.Name, outputName), ca).FullPath);
                    json.Member("hashAlgo", ca.MethodAndAlgorithm.ToDerivationHashAlgo());
                    json.Member("hash", ca.Hash.ToBase16());
                    break;
                case DerivationOutputKind.Floating:
                    json.Member("hashAlgo", output.HashAlgo);
                    break;
                case DerivationOutputKind.Impure:
                    json.Member("hashAlgo", output.HashAlgo);
                    json.Key("impure");
                    json.BooleanValue(true);
                    break;
                case DerivationOutputKind.Deferred:
                    break;
            }

            json.EndObject();
        }

        json.EndObject();

        json.Key("inputSrcs");
        json.BeginArray();
        foreach (var source in derivation.InputSources)
        {
            json.StringValue(source.FullPath);
        }

        json.EndArray();

        json.Key("inputDrvs");
        json.BeginObject();
        foreach (var (drvPath, outputs) in derivation.InputDerivations)
        {
            json.Key(drvPath.FullPath);
            json.BeginArray();
            foreach (var output in outputs)
            {
                json.StringValue(output);
            }

            json.EndArray();
        }

        json.EndObject();

        json.Member("system", derivation.Platform);
        json.Member("builder", derivation.Builder);

        json.Key("args");
        json.BeginArray();
        foreach (var argument in derivation.Arguments)
        {
            json.StringValue(argument);
        }

        json.EndArray();

        json.Key("env");
        json.BeginObject();
        foreach (var (key, value) in derivation.Environment)
        {
            json.Member(key, value);
        }

        json.EndObject();
        json.EndObject();
    }
}
