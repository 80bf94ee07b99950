using System.Text.Json.Nodes;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.References;
using Kiln.Nix.StorePaths;

namespace Kiln.Agent;

/// <summary>
/// What Nix does with a build's outputs once the builder exits 0 (<c>registerOutputs</c>, <c>checkOutputs</c>): each
/// must exist and must not be group- or world-writable at the top; it is canonicalised, NAR-serialised once into the
/// store while the NAR is hashed and scanned for references to the input closure and to the derivation's own outputs;
/// a fixed output must have the declared hash; reference and size constraints must hold. Any violation rejects the
/// outputs (Nix's OutputRejected) and nothing of them is kept.
/// </summary>
internal static class OutputProcessor
{
    /// <summary>A reason to reject the outputs, with Nix's message.</summary>
    public sealed class RejectedException(string message) : Exception(message);

    /// <param name="job">The build.</param>
    /// <param name="structured">The derivation's structured attributes (their <c>outputChecks</c>), if it has them.</param>
    /// <param name="hostStore">The directory the sandbox's <c>/nix/store</c> was.</param>
    /// <param name="store">Where the output NARs go.</param>
    /// <param name="builderUid">The user the build ran as, which must own each output; null when it ran as Kiln.</param>
    public static List<(BuiltOutput Output, string Tree)> Process(BuildJob job, StructuredAttributes? structured, string hostStore, IAgentStore store, int? builderUid = null)
    {
        var derivation = job.Derivation;
        var outputs = derivation.Outputs.Select(o => (Name: o.Key, Path: o.Value.StorePath!.Value, o.Value)).ToList();
        var candidates = job.ReferenceCandidates();
        var results = new List<(BuiltOutput, string)>();
        var pending = new List<IPendingNar>();
        try
        {
            foreach (var (name, path, declared) in outputs)
            {
                var tree = Path.Combine(hostStore, path.BaseName);
                if (!StorePathGraph.ExistsNoFollow(tree))
                {
                    throw new RejectedException($"builder for '{job.DrvPath}' failed to produce output path for output '{name}' at '{path}'");
                }

                if (Canonicaliser.IsSuspicious(tree, (uint?)builderUid))
                {
                    throw new RejectedException($"suspicious ownership or permission on '{path}' for output '{name}'; rejecting this build output");
                }

                try
                {
                    Canonicaliser.Canonicalise(tree);
                }
                catch (IOException e)
                {
                    throw new RejectedException(e.Message.Replace(tree, path.FullPath, StringComparison.Ordinal));
                }

                var nar = store.CreateNar();
                pending.Add(nar);
                var scanner = new ReferenceScanner(candidates);
                using (var tee = new OutputStream(nar, scanner))
                {
                    NarDumper.Dump(tree, tee);
                }

                var (narHash, narSize) = nar.Complete();

                var references = scanner.Found.Order().ToList();
                ContentAddress? ca = null;
                if (declared.Kind == DerivationOutputKind.Fixed)
                {
                    ca = CheckFixedOutput(job.DrvPath, derivation.Name, name, path, declared.FixedHash, tree, narHash);

                    // A fixed-output path is named by its content alone: references would be closure the name does
                    // not vouch for (and a way to smuggle paths past the hash). Nix refuses them as a hash mismatch.
                    if (references.Count > 0)
                    {
                        throw new HashMismatchException($"fixed-output derivations must not reference store paths: '{job.DrvPath}' references {references.Count} distinct paths, e.g. '{references[0]}'");
                    }
                }

                results.Add((new BuiltOutput(name, path, narHash, narSize, references, ca), tree));
            }

            CheckCycles(job, results.Select(r => r.Item1).ToList());
            CheckReferences(job, structured, results.Select(r => r.Item1).ToList());
            for (var i = 0; i < results.Count; i++)
            {
                pending[i].Commit();
            }

            return results;
        }
        finally
        {
            foreach (var nar in pending)
            {
                nar.Dispose();
            }
        }
    }

    // Outputs may refer to each other only one way: Nix registers them in reference order and refuses a cycle.
    private static void CheckCycles(BuildJob job, IReadOnlyList<BuiltOutput> outputs)
    {
        // A depth-first walk with its own stack (a derivation may have as many outputs as its author likes): meeting
        // an output again while it is still being visited is a cycle.
        var byPath = outputs.ToDictionary(o => o.Path);
        var state = new Dictionary<StorePath, bool>(); // false: being visited, true: done
        var stack = new Stack<(BuiltOutput Output, BuiltOutput? From, bool Expanded)>();
        foreach (var root in outputs)
        {
            stack.Push((root, null, false));
            while (stack.TryPop(out var item))
            {
                var (output, from, expanded) = item;
                if (expanded)
                {
                    state[output.Path] = true;
                    continue;
                }

                if (state.TryGetValue(output.Path, out var done))
                {
                    if (!done)
                    {
                        throw new RejectedException($"cycle detected in build of '{job.DrvPath}' in the references of output '{output.Name}' from output '{from?.Name}'");
                    }

                    continue;
                }

                state[output.Path] = false;
                stack.Push((output, from, true));
                foreach (var reference in output.References)
                {
                    if (reference != output.Path && byPath.TryGetValue(reference, out var sibling))
                    {
                        stack.Push((sibling, output, false));
                    }
                }
            }
        }
    }

    private static ContentAddress CheckFixedOutput(StorePath drvPath, string drvName, string outputName, StorePath path, ContentAddress declared, string tree, NixHash narHash)
    {
        NixHash got;
        if (declared.Method == ContentAddressMethod.Recursive)
        {
            got = declared.Hash.Algorithm == NixHashAlgorithm.Sha256 ? narHash : HashNar(tree, declared.Hash.Algorithm);
        }
        else if (declared.Method == ContentAddressMethod.Flat)
        {
            var info = new FileInfo(tree);
            if (info.LinkTarget is not null || !info.Exists || (info.UnixFileMode & UnixFileMode.UserExecute) != 0)
            {
                throw new RejectedException($"output path '{path}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)");
            }

            using var file = File.OpenRead(tree);
            using var hashing = new HashingStream(declared.Hash.Algorithm);
            file.CopyTo(hashing);
            got = hashing.Finish();
        }
        else
        {
            throw new RejectedException($"output '{outputName}' of '{drvPath}' uses a content-address method Kiln does not build ({declared.Method})");
        }

        var actual = StorePathComputer.MakeFixedOutputPath(StorePathComputer.OutputPathName(drvName, outputName), new ContentAddress(declared.Method, got));
        if (actual != path || got != declared.Hash)
        {
            throw new HashMismatchException($"hash mismatch in fixed-output derivation '{drvPath}':\n  specified: {declared.Hash.ToSri()}\n     got:    {got.ToSri()}");
        }

        return new ContentAddress(declared.Method, got);
    }

    private static NixHash HashNar(string tree, NixHashAlgorithm algorithm)
    {
        using var hashing = new HashingStream(algorithm);
        NarDumper.Dump(tree, hashing);
        return hashing.Finish();
    }

    // allowedReferences and friends: for every output in the plain form (self-references ignored for the
    // requisites checks), per output under outputChecks with structured attributes (nothing ignored), as Nix 2.8.
    private static void CheckReferences(BuildJob job, StructuredAttributes? structured, IReadOnlyList<BuiltOutput> outputs)
    {
        var derivation = job.Derivation;
        var graph = job.Inputs.ToDictionary(i => i.Path, i => i.References);
        var sizes = job.Inputs.ToDictionary(i => i.Path, i => i.NarSize);
        foreach (var output in outputs)
        {
            graph[output.Path] = output.References;
            sizes[output.Path] = output.NarSize;
        }

        foreach (var output in outputs)
        {
            var checks = new List<(string Attribute, IReadOnlyList<string>? Spec)>();
            var ignoreSelf = true;
            long? maxSize = null, maxClosureSize = null;
            if (structured is not null)
            {
                ignoreSelf = false;
                if (structured.GetObject("outputChecks")?[output.Name] is JsonObject perOutput)
                {
                    foreach (var attribute in CheckAttributes)
                    {
                        checks.Add((attribute, StructuredAttributes.GetStrings(perOutput, attribute, job.DrvPath.FullPath)));
                    }

                    maxSize = perOutput["maxSize"]?.GetValue<long>();
                    maxClosureSize = perOutput["maxClosureSize"]?.GetValue<long>();
                }
            }
            else
            {
                foreach (var attribute in CheckAttributes)
                {
                    checks.Add((attribute, derivation.Environment.TryGetValue(attribute, out var value) ? BuildEnvironment.Tokens(value).ToList() : null));
                }
            }

            if (maxSize is { } limit && output.NarSize > limit)
            {
                throw new RejectedException($"path '{output.Path}' is too large at {output.NarSize} bytes; limit is {limit} bytes");
            }

            var closure = StorePathGraph.Closure(output.Path, p => graph.GetValueOrDefault(p));
            if (maxClosureSize is { } closureLimit)
            {
                var total = closure.Sum(p => sizes.GetValueOrDefault(p));
                if (total > closureLimit)
                {
                    throw new RejectedException($"closure of path '{output.Path}' is too large at {total} bytes; limit is {closureLimit} bytes");
                }
            }

            foreach (var (attribute, spec) in checks)
            {
                if (spec is null)
                {
                    continue;
                }

                var allowed = attribute.StartsWith("allowed", StringComparison.Ordinal);
                var requisites = attribute.EndsWith("Requisites", StringComparison.Ordinal);
                var listed = spec.Select(s => Resolve(s, derivation, job.DrvPath)).ToHashSet();
                var used = requisites ? new HashSet<StorePath>(closure) : new HashSet<StorePath>(output.References);
                if (requisites && ignoreSelf)
                {
                    used.Remove(output.Path);
                }

                var bad = used.Where(p => allowed ? !listed.Contains(p) : listed.Contains(p)).Order().ToList();
                if (bad.Count > 0)
                {
                    throw new RejectedException($"output '{output.Path}' is not allowed to refer to the following paths:{string.Concat(bad.Select(p => "\n  " + p))}");
                }
            }
        }
    }

    private static readonly string[] CheckAttributes = ["allowedReferences", "allowedRequisites", "disallowedReferences", "disallowedRequisites"];

    private static StorePath Resolve(string spec, Derivation derivation, StorePath drvPath)
    {
        if (StorePath.TryParse(spec, out var path))
        {
            return path;
        }

        if (derivation.Outputs.TryGetValue(spec, out var output) && output.StorePath is { } outputPath)
        {
            return outputPath;
        }

        throw new RejectedException($"derivation '{drvPath}' contains an illegal reference specifier '{spec}'");
    }

    // Writes the NAR to the store (which hashes it) while scanning it for references.
    private sealed class OutputStream(IPendingNar nar, ReferenceScanner scanner) : Stream
    {
        private long _size;

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            scanner.Scan(buffer);
            nar.Write(buffer);
            _size += buffer.Length;
        }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => _size; set => throw new NotSupportedException(); }

        public override void Flush()
        {
        }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }
}

/// <summary>A fixed output's contents do not have the declared hash.</summary>
internal sealed class HashMismatchException(string message) : Exception(message);
