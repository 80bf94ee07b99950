using System.Text;
using Kiln.Nix.Hashing;

namespace Kiln.Nix.StorePaths;

/// <summary>
/// Computes store paths the way Nix does (<c>makeStorePath</c> and friends in Nix's
/// <c>src/libstore/store-dir-config.cc</c>; spec: the manual's <c>protocols/store-path.md</c>):
/// <c>sha256("&lt;type&gt;:sha256:&lt;inner hex&gt;:/nix/store:&lt;name&gt;")</c> XOR-folded to 20 bytes, in Nix32.
/// </summary>
public static class StorePathComputer
{
    /// <summary>
    /// The primitive: <paramref name="type"/> is <c>text[:refs…]</c>, <c>source[:refs…][:self]</c> or <c>output:&lt;name&gt;</c>;
    /// <paramref name="innerHash"/> is printed as <c>algo:hex</c>.
    /// </summary>
    public static StorePath MakeStorePath(string type, NixHash innerHash, string name)
    {
        StorePath.ValidateName(name, name);
        var fingerprint = $"{type}:{innerHash.ToString(HashFormat.Base16, true)}:{StorePath.StoreDir}:{name}";
        var digest = NixHash.Compute(NixHashAlgorithm.Sha256, Encoding.UTF8.GetBytes(fingerprint));
        return StorePath.FromHash(CompressHash(digest.Digest, 20), name);
    }

    /// <summary>XOR-folds a digest into <paramref name="size"/> bytes (Nix's <c>compressHash</c>).</summary>
    public static byte[] CompressHash(ReadOnlySpan<byte> digest, int size)
    {
        var result = new byte[size];
        for (var i = 0; i < digest.Length; i++)
        {
            result[i % size] ^= digest[i];
        }

        return result;
    }

    /// <summary>
    /// A <c>text:sha256</c> path (a .drv file or <c>builtins.toFile</c>): <paramref name="contentHash"/> is the sha256
    /// of the file; <paramref name="references"/> are the store paths it refers to.
    /// </summary>
    public static StorePath MakeTextPath(string name, NixHash contentHash, IEnumerable<StorePath> references)
    {
        if (contentHash.Algorithm != NixHashAlgorithm.Sha256)
        {
            throw new ArgumentException("text paths are always sha256", nameof(contentHash));
        }

        return MakeStorePath(MakeType("text", references, self: false), contentHash, name);
    }

    /// <summary>
    /// A fixed-output (content-addressed) path. NAR-hashed sha256 gives a <c>source</c> path, which may have
    /// <paramref name="references"/> and refer to itself; everything else is <c>output:out</c> over
    /// <c>fixed:out:&lt;method&gt;&lt;algo&gt;:&lt;hex&gt;:</c> and may have no references.
    /// </summary>
    public static StorePath MakeFixedOutputPath(
        string name, ContentAddressMethod method, NixHash hash, IEnumerable<StorePath>? references = null, bool self = false)
    {
        references ??= [];
        if (method == ContentAddressMethod.Text)
        {
            if (self)
            {
                throw new ArgumentException("text paths cannot refer to themselves", nameof(self));
            }

            return MakeTextPath(name, hash, references);
        }

        if (method == ContentAddressMethod.Recursive && hash.Algorithm == NixHashAlgorithm.Sha256)
        {
            return MakeStorePath(MakeType("source", references, self), hash, name);
        }

        if (method == ContentAddressMethod.Git && hash.Algorithm is not (NixHashAlgorithm.Sha1 or NixHashAlgorithm.Sha256))
        {
            throw new NixFormatException($"Git file ingestion must use SHA-1 or SHA-256 hash, but instead using: {hash.Algorithm.Name()}");
        }

        if (self || references.Any())
        {
            throw new NixFormatException($"fixed output '{name}' is not allowed to refer to other store paths");
        }

        var inner = NixHash.Compute(
            NixHashAlgorithm.Sha256,
            $"fixed:out:{ContentAddressMethodAndAlgorithm.MethodPrefix(method, forDerivation: true)}{hash.ToString(HashFormat.Base16, true)}:");
        return MakeStorePath("output:out", inner, name);
    }

    /// <summary>The path of <paramref name="ca"/> with the given references.</summary>
    public static StorePath MakeFixedOutputPath(string name, ContentAddress ca, IEnumerable<StorePath>? references = null, bool self = false) =>
        MakeFixedOutputPath(name, ca.Method, ca.Hash, references, self);

    /// <summary>
    /// An input-addressed derivation output: <c>output:&lt;output&gt;</c> over the derivation's modulo hash, named
    /// <paramref name="derivationName"/> for <c>out</c> and <c>name-output</c> otherwise.
    /// </summary>
    public static StorePath MakeOutputPath(string outputName, NixHash derivationHash, string derivationName) =>
        MakeStorePath($"output:{outputName}", derivationHash, OutputPathName(derivationName, outputName));

    /// <summary>The name of an output path: the derivation name, plus <c>-output</c> unless the output is <c>out</c>.</summary>
    public static string OutputPathName(string derivationName, string outputName) =>
        outputName == "out" ? derivationName : $"{derivationName}-{outputName}";

    private static string MakeType(string type, IEnumerable<StorePath> references, bool self)
    {
        var builder = new StringBuilder(type);
        foreach (var reference in references.Distinct().Order())
        {
            builder.Append(':').Append(reference.FullPath);
        }

        if (self)
        {
            builder.Append(":self");
        }

        return builder.ToString();
    }
}
