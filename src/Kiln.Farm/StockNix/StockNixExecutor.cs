using System.Globalization;
using Kiln.Agent;
using Kiln.Nix.Derivations;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Protocol.Worker;
using Kiln.Store.Blobs;

namespace Kiln.Farm.StockNix;

/// <summary>Where a stock builder is and how Kiln logs in there (files the server wrote from the builder's record).</summary>
public sealed record StockBuilderLogin(BuilderAddress Address, string KeyFile, string KnownHostsFile, bool HostKeyKnown);

/// <summary>
/// Builds on a stock Nix machine through its daemon, as Nix's own build hook does: one SSH connection per build; the
/// input closure copied there (only what it lacks, or holds with other contents, which is repaired), the derivation
/// built with BuildDerivation (its input sources naming the whole closure), its log lines passed on live, and each
/// output copied back into Kiln's blob store and checked as any upload is — the NAR validated and hashed (it must be
/// what the daemon says it holds), a fixed output's content hash, and the references found by Kiln's own scan, which
/// must be the daemon's. The builder's own failures are outcomes; an unreachable builder or a broken connection
/// gives the job back for another attempt (<see cref="ExecutorUnavailableException"/>).
/// </summary>
public sealed class StockNixExecutor(StockBuilderLogin login, IBlobStore blobs, int slots, long maxNarSize) : IBuildExecutor
{
    public int Slots => slots;

    public async Task<BuildOutcome> BuildAsync(BuildJob job, IBuildLog log, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(job);
        ArgumentNullException.ThrowIfNull(log);
        var started = DateTimeOffset.UtcNow;
        var connection = await SshDaemonConnection.OpenAsync(login.Address, login.KeyFile, login.KnownHostsFile, login.HostKeyKnown, cancellationToken)
            .ConfigureAwait(false);
        await using (connection.ConfigureAwait(false))
        {
            try
            {
                return await BuildAsync(connection.Client, job, log, started, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is ProtocolViolationException or IOException or NixErrorException or Kiln.Nix.NixFormatException)
            {
                // Counted: the builder was reached and failed at this job (a connection cut mid-build, a daemon error).
                var ssh = await connection.ExitMessageAsync().ConfigureAwait(false);
                throw new ExecutorUnavailableException("the builder failed", $"the Nix daemon at {login.Address} failed: {e.Message}{(ssh.Length > 0 ? $" ({ssh})" : "")}",
                    counted: true, e);
            }
        }
    }

    private async Task<BuildOutcome> BuildAsync(WorkerClient daemon, BuildJob job, IBuildLog log, DateTimeOffset started, CancellationToken cancellationToken)
    {
        // The operator's limits, as Nix's own settings (the daemon trusts Kiln, so it applies them); nothing substituted,
        // and nothing passed on to builders of the builder's own.
        var overrides = new Dictionary<string, string>(StringComparer.Ordinal) { ["builders"] = "" };
        if (job.Limits.Timeout > TimeSpan.Zero)
        {
            overrides["timeout"] = ((long)Math.Ceiling(job.Limits.Timeout.TotalSeconds)).ToString(CultureInfo.InvariantCulture);
        }

        if (job.Limits.MaxLogSize > 0)
        {
            overrides["max-build-log-size"] = job.Limits.MaxLogSize.ToString(CultureInfo.InvariantCulture);
        }

        await daemon.SetOptionsAsync(job.Limits.Cores, job.Limits.MaxSilentTime, overrides, cancellationToken).ConfigureAwait(false);
        await CopyInputsAsync(daemon, job, cancellationToken).ConfigureAwait(false);

        // Outputs already there were not built for this job (an earlier build from other inputs, the builder's own
        // users): they go, or the build runs as a check, which fails unless it makes exactly what is there.
        var outputPaths = job.Derivation.Outputs.Values.Where(o => o.StorePath is not null).Select(o => o.StorePath!.Value).ToList();
        var present = await daemon.QueryValidPathsAsync(outputPaths, cancellationToken).ConfigureAwait(false);
        var check = false;
        if (present.Count > 0)
        {
            try
            {
                check = !(await daemon.DeletePathsAsync(present, cancellationToken).ConfigureAwait(false)).IsSupersetOf(present);
            }
            catch (NixErrorException)
            {
                check = true; // still alive there (another path refers to it)
            }
        }

        // As Nix's build hook does: with input derivations, the input sources the daemon sees name the whole closure.
        var derivation = job.Derivation.InputDerivations.Count == 0
            ? job.Derivation
            : new Derivation
            {
                Name = job.Derivation.Name,
                Outputs = job.Derivation.Outputs,
                InputSources = new SortedSet<StorePath>(job.Inputs.Select(i => i.Path)),
                Platform = job.Derivation.Platform,
                Builder = job.Derivation.Builder,
                Arguments = job.Derivation.Arguments,
                Environment = job.Derivation.Environment,
            };
        var tail = new Queue<string>();
        var result = await daemon.BuildDerivationAsync(job.DrvPath, derivation, line =>
        {
            log.Line(line);
            tail.Enqueue(line);
            if (tail.Count > 10)
            {
                tail.Dequeue();
            }
        }, cancellationToken, check).ConfigureAwait(false);
        var outcome = new BuildOutcome
        {
            StartTime = Time(result.StartTime) ?? started,
            StopTime = Time(result.StopTime) ?? DateTimeOffset.UtcNow,
            CpuUser = result.CpuUser,
            CpuSystem = result.CpuSystem,
            LogTail = [.. tail],
        };
        if (result.Status is BuildStatus.Substituted)
        {
            throw new ProtocolViolationException("the daemon substituted an output Kiln asked it to build");
        }

        if (!result.Succeeded)
        {
            // The daemon's message is Nix's own, with the last log lines when it was not verbose.
            return outcome with { Failure = FailureOf(result.Status), ErrorMessage = result.ErrorMessage };
        }

        var outputs = new List<BuiltOutput>();
        foreach (var (name, declared) in job.Derivation.Outputs)
        {
            var (output, rejected) = await FetchOutputAsync(daemon, job, name, declared, cancellationToken).ConfigureAwait(false);
            if (rejected is not null)
            {
                return outcome with { Failure = BuildFailureKind.OutputRejected, ErrorMessage = rejected };
            }

            outputs.Add(output!);
        }

        return outcome with { Outputs = outputs };
    }

    // Copies the inputs the daemon lacks, references first. A path it holds with other contents (two accounts may
    // hold different contents under one input-addressed path; only globally trusted ones come here) is repaired.
    private async Task CopyInputsAsync(WorkerClient daemon, BuildJob job, CancellationToken cancellationToken)
    {
        var inputs = job.Inputs.ToDictionary(i => i.Path);
        var held = await daemon.QueryValidPathsAsync(inputs.Keys, cancellationToken).ConfigureAwait(false);
        var repair = new HashSet<StorePath>();
        foreach (var path in held)
        {
            var info = await daemon.QueryPathInfoAsync(path, cancellationToken).ConfigureAwait(false);
            if (info is not null && info.NarHash != inputs[path].NarHash)
            {
                repair.Add(path);
            }
        }

        var wanted = inputs.Keys.Where(p => !held.Contains(p) || repair.Contains(p)).ToHashSet();
        if (!held.IsSubsetOf(inputs.Keys))
        {
            throw new ProtocolViolationException("the daemon named paths Kiln did not ask about");
        }

        foreach (var path in ReferencesFirst(wanted, inputs))
        {
            var input = inputs[path];
            var source = await blobs.OpenReadAsync(input.NarHash, cancellationToken).ConfigureAwait(false)
                ?? throw new ExecutorUnavailableException($"the input '{path}' is missing from Kiln's store", $"the input NAR of '{path}' is missing", counted: true);
            var nar = await source.OpenStreamAsync(cancellationToken).ConfigureAwait(false);
            await using (nar.ConfigureAwait(false))
            {
                var info = new ValidPathInfo { Path = path, NarHash = input.NarHash, NarSize = input.NarSize, References = new SortedSet<StorePath>(input.References) };
                await daemon.AddToStoreNarAsync(info, nar, repair.Contains(path), cancellationToken).ConfigureAwait(false);
            }
        }
    }

    // The paths in an order where each comes after those of its references that are also copied (the daemon registers
    // a path only once what it refers to is valid). Iterative: closures can be deep.
    private static List<StorePath> ReferencesFirst(HashSet<StorePath> paths, Dictionary<StorePath, BuildInput> inputs)
    {
        var order = new List<StorePath>();
        var done = new HashSet<StorePath>();
        foreach (var root in paths.Order())
        {
            var stack = new Stack<(StorePath Path, bool Expanded)>([(root, false)]);
            while (stack.TryPop(out var item))
            {
                if (done.Contains(item.Path))
                {
                    continue;
                }

                if (item.Expanded)
                {
                    done.Add(item.Path);
                    order.Add(item.Path);
                    continue;
                }

                stack.Push((item.Path, true));
                foreach (var reference in inputs[item.Path].References.Where(r => r != item.Path && paths.Contains(r) && !done.Contains(r)))
                {
                    stack.Push((reference, false));
                }
            }
        }

        return order;
    }

    // One output, from the daemon into a blob, checked on the way; the reason it is refused otherwise.
    private async Task<(BuiltOutput? Output, string? Rejected)> FetchOutputAsync(WorkerClient daemon, BuildJob job, string name, DerivationOutput declared, CancellationToken cancellationToken)
    {
        if (declared.StorePath is not { } path)
        {
            return (null, $"output '{name}' of '{job.DrvPath}' is content-addressed, which Kiln does not build");
        }

        var info = await daemon.QueryPathInfoAsync(path, cancellationToken).ConfigureAwait(false);
        if (info is null)
        {
            return (null, $"the builder reported success but did not produce output '{name}' ('{path}')");
        }

        var fixedHash = job.Derivation.IsFixedOutput ? declared.FixedHash : (ContentAddress?)null;
        if (fixedHash is { Method: not (ContentAddressMethod.Flat or ContentAddressMethod.Recursive) })
        {
            return (null, $"fixed output '{name}' is {fixedHash.Value.Method}-addressed, which Kiln does not check");
        }

        // A fixed output's path follows from its hash: the derivation must name the path its hash makes.
        if (fixedHash is { } fixedAddress && StorePathComputer.MakeFixedOutputPath(StorePathComputer.OutputPathName(job.Derivation.Name, name), fixedAddress) != path)
        {
            return (null, $"fixed output '{name}' of '{job.DrvPath}' is at {path}, not at the path its hash makes");
        }

        if (info.NarSize > maxNarSize)
        {
            return (null, $"output '{name}' is {info.NarSize} bytes, more than the {maxNarSize} Kiln takes");
        }

        var scanner = new Kiln.Nix.References.ReferenceScanner(job.ReferenceCandidates());
        var source = await daemon.NarFromPathAsync(path, cancellationToken).ConfigureAwait(false);
        var nar = await NarIngest.IngestAsync(blobs, new ScanningStream(source, scanner), fixedHash?.MethodAndAlgorithm, 0, maxNarSize, cancellationToken)
            .ConfigureAwait(false);
        await using (nar.ConfigureAwait(false))
        {
            if (nar.NarHash != info.NarHash || nar.NarSize != info.NarSize)
            {
                throw new ProtocolViolationException($"the NAR of '{path}' is not the one the daemon describes ({nar.NarHash.ToNix32()}, {nar.NarSize} bytes)");
            }

            if (fixedHash is { } wanted && nar.ContentHash != wanted.Hash)
            {
                return (null, $"hash mismatch in fixed-output derivation '{job.DrvPath}':\n  specified: {wanted.Hash.ToSri()}\n     got:    {nar.ContentHash?.ToSri()}");
            }

            var references = scanner.Found.ToHashSet();
            if (!references.SetEquals(info.References) || (fixedHash is not null && references.Count > 0))
            {
                return (null, $"output '{name}' refers to {{{string.Join(", ", references.Order())}}}, but the builder registered {{{string.Join(", ", info.References.Order())}}}");
            }

            await nar.CommitAsync(cancellationToken).ConfigureAwait(false);
            return (new BuiltOutput(name, path, nar.NarHash, nar.NarSize, [.. references.Order()], fixedHash), null);
        }
    }

    // A time the daemon reported (Unix seconds); null when it said none or one no clock shows.
    private static DateTimeOffset? Time(long seconds) => seconds is > 0 and < 253402300799 ? DateTimeOffset.FromUnixTimeSeconds(seconds) : null;

    private static BuildFailureKind FailureOf(BuildStatus status) => status switch
    {
        BuildStatus.PermanentFailure or BuildStatus.NotDeterministic => BuildFailureKind.PermanentFailure,
        BuildStatus.InputRejected => BuildFailureKind.InputRejected,
        BuildStatus.OutputRejected => BuildFailureKind.OutputRejected,
        BuildStatus.TransientFailure => BuildFailureKind.TransientFailure,
        BuildStatus.TimedOut => BuildFailureKind.TimedOut,
        BuildStatus.LogLimitExceeded => BuildFailureKind.LogLimitExceeded,
        _ => BuildFailureKind.MiscFailure,
    };
}
