using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Derivations;

/// <summary>
/// Nix's <c>hashDerivationModulo</c> (<c>src/libstore/derivations.cc</c>) and the output paths it determines.
/// <list type="bullet">
/// <item>A fixed-output derivation hashes to <c>sha256("fixed:out:&lt;hashAlgo&gt;:&lt;hex&gt;:&lt;output path&gt;")</c>, so
/// derivations that fetch the same content the same way have the same hash, whatever their builder.</item>
/// <item>Any other derivation hashes to the sha256 of its ATerm in which each input derivation is replaced by the
/// hex of its own modulo hash (the map re-sorted by that hex, output sets merged) and, when computing its own
/// outputs, its output paths and the environment variables named after its outputs are blanked.</item>
/// </list>
/// Input derivations are loaded through a resolver (the local /nix/store, or Kiln's store) and memoised.
/// </summary>
public sealed class DerivationHasher(Func<StorePath, Derivation> loadDerivation)
{
    private readonly Dictionary<StorePath, ModuloHash> _cache = [];

    /// <summary>The result of hashing: per-output hashes, and whether output paths are deferred.</summary>
    public sealed record ModuloHash(IReadOnlyDictionary<string, NixHash> OutputHashes, bool Deferred);

    /// <summary>A hasher that reads input derivations from the local file system's /nix/store.</summary>
    public static DerivationHasher ForLocalStore() =>
        new(path => ATerm.ParseFile(path.FullPath));

    /// <summary>hashDerivationModulo of <paramref name="derivation"/>.</summary>
    public ModuloHash HashModulo(Derivation derivation, bool maskOutputs)
    {
        ArgumentNullException.ThrowIfNull(derivation);
        HashInputs(derivation);
        return Compute(derivation, maskOutputs);
    }

    // Hashes every input derivation not hashed yet, deepest first, so that computing one only ever reads hashes
    // already known: iterative, because the depth of a derivation graph is the tenant's to choose (Nix recurses; a
    // chain of 100,000 derivations must not overflow Kiln's stack).
    private void HashInputs(Derivation derivation)
    {
        var loaded = new Dictionary<StorePath, Derivation>();
        Derivation Load(StorePath path) => loaded.TryGetValue(path, out var found) ? found : loaded[path] = loadDerivation(path);
        var order = Graph.Order(derivation.InputDerivations.Keys.Where(p => !_cache.ContainsKey(p)), p => Load(p).InputDerivations.Keys, p => !_cache.ContainsKey(p));
        foreach (var path in order)
        {
            _cache[path] = Compute(Load(path), maskOutputs: false);
            loaded.Remove(path);
        }
    }

    private ModuloHash Compute(Derivation derivation, bool maskOutputs)
    {
        if (derivation.IsFixedOutput)
        {
            var hashes = new Dictionary<string, NixHash>();
            foreach (var (outputName, output) in derivation.Outputs)
            {
                var ca = output.FixedHash;
                var path = StorePathComputer.MakeFixedOutputPath(
                    StorePathComputer.OutputPathName(derivation.Name, outputName), ca);
                hashes[outputName] = NixHash.Compute(
                    NixHashAlgorithm.Sha256,
                    $"fixed:out:{ca.MethodAndAlgorithm.ToDerivationHashAlgo()}:{ca.Hash.ToBase16()}:{path.FullPath}");
            }

            return new ModuloHash(hashes, Deferred: false);
        }

        var kinds = derivation.Outputs.Values.Select(o => o.Kind).ToHashSet();
        if (kinds.Contains(DerivationOutputKind.Impure))
        {
            // Nix uses a fixed "impure" hash for every output; such outputs never have paths in the .drv.
            var impure = NixHash.Compute(NixHashAlgorithm.Sha256, "impure");
            return new ModuloHash(derivation.Outputs.Keys.ToDictionary(k => k, _ => impure), Deferred: true);
        }

        // Only floating content-addressed outputs (or deferred inputs) make the hash deferred. An output written as
        // ("", "", "") is input-addressed with its path still to be computed, as during instantiation.
        var deferred = kinds.Contains(DerivationOutputKind.Floating);
        var inputs = new SortedDictionary<string, SortedSet<string>>(Utf8Order.Comparer);
        foreach (var (drvPath, outputs) in derivation.InputDerivations)
        {
            // Every input was hashed first; one that was not can only be on a cycle (which no real .drv can form).
            var inputHash = _cache.TryGetValue(drvPath, out var known) ? known
                : throw new DerivationFormatException($"derivation '{drvPath}' depends on itself");
            deferred |= inputHash.Deferred;
            foreach (var outputName in outputs)
            {
                if (!inputHash.OutputHashes.TryGetValue(outputName, out var hash))
                {
                    throw new DerivationFormatException($"derivation '{drvPath}' has no output '{outputName}'");
                }

                var key = hash.ToBase16();
                if (!inputs.TryGetValue(key, out var set))
                {
                    inputs[key] = set = new SortedSet<string>(Utf8Order.Comparer);
                }

                set.Add(outputName);
            }
        }

        var digest = NixHash.Compute(NixHashAlgorithm.Sha256, ATerm.Print(derivation, maskOutputs, inputs));
        return new ModuloHash(derivation.Outputs.Keys.ToDictionary(k => k, _ => digest), deferred);
    }

    /// <summary>
    /// The output paths Nix would write into this derivation: computed for input-addressed and fixed outputs (an
    /// input-addressed output may be written with an empty path, as while instantiating), and absent (empty
    /// string) for floating and impure outputs and for derivations that depend on floating ones.
    /// </summary>
    public IReadOnlyDictionary<string, string> ComputeOutputPaths(Derivation derivation)
    {
        ArgumentNullException.ThrowIfNull(derivation);
        var result = new SortedDictionary<string, string>(Utf8Order.Comparer);
        if (derivation.IsFixedOutput)
        {
            foreach (var (outputName, output) in derivation.Outputs)
            {
                result[outputName] = StorePathComputer.MakeFixedOutputPath(
                    StorePathComputer.OutputPathName(derivation.Name, outputName), output.FixedHash).FullPath;
            }

            return result;
        }

        if (derivation.Outputs.Values.Any(o => o.Kind is DerivationOutputKind.Floating or DerivationOutputKind.Impure))
        {
            return derivation.Outputs.Keys.ToDictionary(k => k, _ => "");
        }

        var hash = HashModulo(derivation, maskOutputs: true);
        foreach (var outputName in derivation.Outputs.Keys)
        {
            result[outputName] = hash.Deferred
                ? ""
                : StorePathComputer.MakeOutputPath(outputName, hash.OutputHashes[outputName], derivation.Name).FullPath;
        }

        return result;
    }

    /// <summary>The store path of the .drv file itself: a text path over its ATerm, referring to its inputs.</summary>
    public static StorePath DerivationPath(Derivation derivation)
    {
        ArgumentNullException.ThrowIfNull(derivation);
        var bytes = ATerm.PrintBytes(derivation);
        return StorePathComputer.MakeTextPath(
            derivation.Name + ".drv", NixHash.Compute(NixHashAlgorithm.Sha256, bytes), derivation.References);
    }
}
