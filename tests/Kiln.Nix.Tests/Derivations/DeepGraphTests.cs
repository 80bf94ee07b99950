using System.Globalization;
using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Tests.Derivations;

/// <summary>
/// 20.2: the depth of a store graph is a tenant's to choose, so nothing walks it by recursion: a chain of 100,000
/// derivations hashes (Nix's hashDerivationModulo recursed here and overflowed the stack long before that depth), and a
/// chain of 100,000 paths is put in references-first order.
/// </summary>
public class DeepGraphTests
{
    private const int Depth = 100_000;

    private static StorePath PathOf(int i, string suffix) =>
        StorePath.Parse($"/nix/store/{i.ToString("D32", CultureInfo.InvariantCulture).Replace('0', 'a').Replace('1', 'b').Replace('2', 'c').Replace('3', 'd').Replace('4', 'f').Replace('5', 'g').Replace('6', 'h').Replace('7', 'i').Replace('8', 'j').Replace('9', 'k')}-{suffix}");

    private static Derivation Link(int i)
    {
        var derivation = new Derivation { Name = $"link-{i}", Platform = "x86_64-linux", Builder = "/bin/sh", Arguments = ["-c", "mkdir $out"] };
        derivation.Outputs["out"] = new DerivationOutput("", "", "");
        derivation.Environment["out"] = "";
        if (i > 0)
        {
            derivation.InputDerivations[PathOf(i - 1, $"link-{i - 1}.drv")] = ["out"];
        }

        return derivation;
    }

    [Fact]
    public void A_chain_of_100000_derivations_hashes_without_recursion_and_as_a_short_chain_does()
    {
        var loads = 0;
        var hasher = new DerivationHasher(path =>
        {
            loads++;
            return Link(int.Parse(path.Name.AsSpan("link-".Length, path.Name.Length - "link-".Length - ".drv".Length), CultureInfo.InvariantCulture));
        });
        var top = hasher.ComputeOutputPaths(Link(Depth))["out"];
        Assert.StartsWith("/nix/store/", top, StringComparison.Ordinal);
        Assert.Equal(Depth, loads); // each input loaded and hashed once

        // The same as hashing a short chain step by step, each level on a hasher that already knows the one below.
        var stepwise = new DerivationHasher(path => Link(int.Parse(path.Name.AsSpan(5, path.Name.Length - 9), CultureInfo.InvariantCulture)));
        for (var i = 0; i < 3; i++)
        {
            stepwise.ComputeOutputPaths(Link(i));
        }

        var fresh = new DerivationHasher(path => Link(int.Parse(path.Name.AsSpan(5, path.Name.Length - 9), CultureInfo.InvariantCulture)));
        Assert.Equal(stepwise.ComputeOutputPaths(Link(3))["out"], fresh.ComputeOutputPaths(Link(3))["out"]);
    }

    [Fact]
    public void A_derivation_whose_inputs_lead_back_to_it_is_refused_not_a_stack_overflow()
    {
        var a = PathOf(1, "a.drv");
        var b = PathOf(2, "b.drv");
        Derivation Make(string name, StorePath input)
        {
            var derivation = new Derivation { Name = name, Platform = "x86_64-linux", Builder = "/bin/sh" };
            derivation.Outputs["out"] = new DerivationOutput("", "", "");
            derivation.InputDerivations[input] = ["out"];
            return derivation;
        }

        // Only a lying resolver can make a cycle (a .drv's path is the hash of its contents).
        var hasher = new DerivationHasher(path => path == a ? Make("a", b) : Make("b", a));
        Assert.Throws<DerivationFormatException>(() => hasher.ComputeOutputPaths(Make("top", a)));
    }

    [Fact]
    public void A_chain_of_100000_paths_is_ordered_references_first()
    {
        var order = Graph.Order([Depth], i => i > 0 ? [i - 1] : [], _ => true);
        Assert.Equal(Enumerable.Range(0, Depth + 1), order);
    }
}
