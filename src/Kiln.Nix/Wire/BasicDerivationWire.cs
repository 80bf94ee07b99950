using System.Buffers;
using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Wire;

/// <summary>
/// A derivation as BuildDerivation sends it in both the worker and the serve protocol (Nix's
/// <c>readDerivation</c>/<c>writeDerivation</c>): outputs as (name, path, hashAlgo, hash), input sources, platform,
/// builder, arguments, environment. There are no input derivations (a build hook puts the whole input closure in
/// the sources) and no name: the name comes from the .drv path sent alongside.
/// </summary>
public static class BasicDerivationWire
{
    /// <summary>Reads a BasicDerivation; <paramref name="name"/> is the derivation's name.</summary>
    public static bool TryRead(ref SequenceReader<byte> reader, string name, WireLimits limits, out Derivation derivation)
    {
        ArgumentNullException.ThrowIfNull(limits);
        derivation = null!;
        var start = reader.Consumed;
        if (!TryReadBody(ref reader, name, limits, out var result))
        {
            reader.Rewind(reader.Consumed - start);
            return false;
        }

        derivation = result!;
        return true;
    }

    private static bool TryReadBody(ref SequenceReader<byte> reader, string name, WireLimits limits, out Derivation? derivation)
    {
        derivation = null;
        if (!WireReader.TryReadCount(ref reader, limits, out var outputCount))
        {
            return false;
        }

        var outputs = new SortedDictionary<string, DerivationOutput>(Utf8Order.Comparer);
        for (var i = 0UL; i < outputCount; i++)
        {
            if (!WireReader.TryReadString(ref reader, 1024, out var outputName) ||
                !WireReader.TryReadString(ref reader, 1024, out var path) ||
                !WireReader.TryReadString(ref reader, 1024, out var hashAlgo) ||
                !WireReader.TryReadString(ref reader, 1024, out var hash))
            {
                return false;
            }

            if (path.Length > 0)
            {
                StorePath.Parse(path);
            }

            if (!outputs.TryAdd(outputName, new DerivationOutput(path, hashAlgo, hash)))
            {
                throw new WireFormatException($"duplicate derivation output '{outputName}'");
            }
        }

        if (!WireReader.TryReadStorePaths(ref reader, limits, out var sources) ||
            !WireReader.TryReadString(ref reader, limits.MaxStringLength, out var platform) ||
            !WireReader.TryReadString(ref reader, limits.MaxStringLength, out var builder) ||
            !WireReader.TryReadStrings(ref reader, limits, out var arguments) ||
            !WireReader.TryReadStringMap(ref reader, limits, out var environment))
        {
            return false;
        }

        var env = new SortedDictionary<string, string>(Utf8Order.Comparer);
        foreach (var (key, value) in environment)
        {
            env[key] = value;
        }

        derivation = new Derivation
        {
            Name = name,
            Outputs = outputs,
            InputSources = sources,
            Platform = platform,
            Builder = builder,
            Arguments = arguments,
            Environment = env,
        };
        return true;
    }

    /// <summary>Writes the BasicDerivation part of <paramref name="derivation"/> (input derivations are not sent).</summary>
    public static void Write(IBufferWriter<byte> writer, Derivation derivation)
    {
        ArgumentNullException.ThrowIfNull(derivation);
        WireWriter.WriteU64(writer, (ulong)derivation.Outputs.Count);
        foreach (var (outputName, output) in derivation.Outputs)
        {
            WireWriter.WriteString(writer, outputName);
            WireWriter.WriteString(writer, output.Path);
            WireWriter.WriteString(writer, output.HashAlgo);
            WireWriter.WriteString(writer, output.Hash);
        }

        WireWriter.WriteStorePaths(writer, derivation.InputSources);
        WireWriter.WriteString(writer, derivation.Platform);
        WireWriter.WriteString(writer, derivation.Builder);
        WireWriter.WriteStrings(writer, derivation.Arguments);
        WireWriter.WriteStringMap(writer, derivation.Environment);
    }
}
