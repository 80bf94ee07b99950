using System.Collections.Concurrent;
using System.Text.Json;
using Kiln.Agent;
using Kiln.Nix.Derivations;
using Kiln.Nix.Signing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Protocol.Worker;
using Kiln.Scheduler.Queue;
using Kiln.Store;
using Kiln.Store.Metadata;

namespace Kiln.Scheduler;

/// <summary>
/// One session's builds. A request walks the derivation graph in the session's view: outputs already valid are
/// done; otherwise the inputs are realised first (in parallel), the input closure is resolved to NAR hashes, and the
/// step is reused, joined or run by the <see cref="BuildScheduler"/>. Outputs land in this view, as built by Kiln,
/// signed with Kiln's key when the derivation and every input were globally trusted. Without keep-going, the first
/// failure stops the request.
/// </summary>
internal sealed class SessionBuilder(BuildScheduler scheduler, StoreView view, IReadOnlyList<BuildTag> tags, SessionLimits limits) : IWorkerBuilder
{
    public async Task<IReadOnlyList<BuildResult>> BuildPathsAsync(IReadOnlyList<DerivedPath> targets, ClientBuildSettings settings, IBuildEvents events, CancellationToken cancellationToken)
    {
        using var request = new Request(scheduler, view, tags, limits, settings, events, cancellationToken);
        var results = new List<Task<BuildResult>>();
        foreach (var target in targets)
        {
            results.Add(request.RealiseTargetAsync(target));
        }

        return await Task.WhenAll(results).ConfigureAwait(false);
    }

    public async Task<BuildResult> BuildDerivationAsync(StorePath drvPath, Derivation derivation, ClientBuildSettings settings, IBuildEvents events, CancellationToken cancellationToken)
    {
        using var request = new Request(scheduler, view, tags, limits, settings, events, cancellationToken);
        var step = await request.BuildBasicAsync(drvPath, derivation).ConfigureAwait(false);
        return step.ToBuildResult(null);
    }

    /// <summary>How one derivation of a request ended.</summary>
    private sealed record Step(BuildStatus Status, string Error, IReadOnlyDictionary<string, StorePath> Outputs, BuildOutcome? Outcome = null)
    {
        public bool Succeeded => Status is BuildStatus.Built or BuildStatus.AlreadyValid or BuildStatus.Substituted;

        public static Step Failed(BuildStatus status, string error, BuildOutcome? outcome = null) =>
            new(status, error, new Dictionary<string, StorePath>(), outcome);

        // A build that never ran (cancelled or refused while it waited, a limit passed) has no times: 0, as Nix sends for
        // a result without them. DateTimeOffset's default is year 1, whose Unix time is negative, and Nix reads the
        // field as a signed integer that must fit: a client refused the whole reply ("serialised integer … is too large").
        private static long Seconds(DateTimeOffset? time) => time is { } t && t != default ? t.ToUnixTimeSeconds() : 0;

        public BuildResult ToBuildResult(HashSet<string>? wanted) => new()
        {
            Status = Status,
            ErrorMessage = Error,
            TimesBuilt = Status == BuildStatus.Built && Outcome is not null ? 1UL : 0UL,
            StartTime = Seconds(Outcome?.StartTime),
            StopTime = Seconds(Outcome?.StopTime),
            CpuUser = Outcome?.CpuUser,
            CpuSystem = Outcome?.CpuSystem,
            BuiltOutputs = Succeeded ? Outputs.Where(o => wanted is null || wanted.Contains(o.Key)).ToDictionary() : new Dictionary<string, StorePath>(),
        };
    }

    private sealed class Request : IDisposable
    {
        private readonly BuildScheduler _scheduler;
        private readonly StoreView _view;
        private readonly IReadOnlyList<BuildTag> _tags;
        private readonly ClientBuildSettings _settings;
        private readonly SessionLimits _limits;
        private int _pushNoted; // (the client is told once per session that pushes run)
        private readonly IBuildEvents _events;
        private readonly CancellationTokenSource _stop;
        private readonly ConcurrentDictionary<StorePath, Lazy<Task<Step>>> _steps = new();
        private readonly ConcurrentDictionary<StorePath, Derivation> _derivations = new();

        // One hasher for the whole request: it remembers each derivation's hash, which every derivation above it
        // needs again. It is not thread-safe, and steps run in parallel.
        private readonly DerivationHasher _hasher;
        private readonly Lock _hasherGate = new();

        public Request(BuildScheduler scheduler, StoreView view, IReadOnlyList<BuildTag> tags, SessionLimits limits, ClientBuildSettings settings, IBuildEvents events,
            CancellationToken cancellationToken)
        {
            _scheduler = scheduler;
            _view = view;
            _tags = tags;
            _limits = limits;
            _settings = limits.Apply(settings);
            _cpuQuota = new Lazy<Task<string?>>(() => _scheduler.CpuQuotaRefusalAsync(_view.AccountId, _limits.CpuQuotaSeconds, _stop!.Token));
            _events = events;
            _stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            _hasher = new DerivationHasher(Load);
        }

        public void Dispose() => _stop.Dispose();

        // Whether the account's CPU quota for the month is spent (its refusal), looked up once per request and only
        // when a derivation is to be built: reused and valid outputs cost nothing and are never refused.
        private readonly Lazy<Task<string?>> _cpuQuota;

        // The hasher's resolver: every derivation it asks for was read (asynchronously) beforehand by LoadClosureAsync,
        // so it never waits on the database, least of all under its lock.
        private Derivation Load(StorePath drvPath) =>
            _derivations.TryGetValue(drvPath, out var derivation) ? derivation : throw new InvalidOperationException($"'{drvPath}' was not read before hashing");

        private readonly ConcurrentDictionary<StorePath, Lazy<Task<Derivation>>> _reads = new();

        private Task<Derivation> ReadAsync(StorePath drvPath) =>
            _reads.GetOrAdd(drvPath, p => new Lazy<Task<Derivation>>(async () =>
            {
                var derivation = await _view.ReadDerivationAsync(p, _stop.Token).ConfigureAwait(false);
                _derivations[p] = derivation;
                return derivation;
            })).Value;

        // The derivation and every input derivation below it, read once each, a level at a time.
        private async Task LoadClosureAsync(StorePath drvPath)
        {
            var frontier = new List<StorePath> { drvPath };
            var seen = new HashSet<StorePath> { drvPath };
            while (frontier.Count > 0)
            {
                var derivations = await Task.WhenAll(frontier.Select(ReadAsync)).ConfigureAwait(false);
                frontier = derivations.SelectMany(d => d.InputDerivations.Keys).Where(seen.Add).ToList();
            }
        }

        public async Task<BuildResult> RealiseTargetAsync(DerivedPath target)
        {
            switch (target)
            {
                case DerivedPath.Opaque opaque:
                    var valid = await _view.QueryValidPathsAsync([opaque.Path], _stop.Token).ConfigureAwait(false);
                    if (!valid.Contains(opaque.Path))
                    {
                        valid = await _view.SubstituteAsync([opaque.Path], _stop.Token, _events.Message).ConfigureAwait(false);
                        if (valid.Contains(opaque.Path))
                        {
                            return new BuildResult { Status = BuildStatus.Substituted };
                        }
                    }

                    return valid.Contains(opaque.Path)
                        ? new BuildResult { Status = BuildStatus.AlreadyValid }
                        : throw new KilnException(ErrorKind.NotFound, $"path '{opaque.Path}' does not exist and cannot be created");
                case DerivedPath.Built built:
                    var derivation = await ReadAsync(built.DrvPath).ConfigureAwait(false);
                    var unknown = built.Outputs?.Where(o => !derivation.Outputs.ContainsKey(o)).ToList() ?? [];
                    if (unknown.Count > 0)
                    {
                        throw new KilnException(ErrorKind.Invalid, $"derivation '{built.DrvPath}' does not have wanted outputs {string.Join(", ", unknown.Select(o => $"'{o}'"))}");
                    }

                    var step = await RealiseAsync(built.DrvPath).ConfigureAwait(false);
                    return step.ToBuildResult(built.Outputs is null ? null : new HashSet<string>(built.Outputs));
                default:
                    throw new ArgumentOutOfRangeException(nameof(target));
            }
        }

        private Task<Step> RealiseAsync(StorePath drvPath) =>
            _steps.GetOrAdd(drvPath, p => new Lazy<Task<Step>>(() => Task.Run(() => RealiseCoreAsync(p)))).Value;

        private async Task<Step> RealiseCoreAsync(StorePath drvPath)
        {
            try
            {
                var step = await RealiseUncheckedAsync(drvPath).ConfigureAwait(false);
                if (!step.Succeeded && !_settings.KeepGoing)
                {
                    await _stop.CancelAsync().ConfigureAwait(false); // stop at the first failure, as Nix does without --keep-going
                }

                return step;
            }
            catch (KilnException e)
            {
                if (!_settings.KeepGoing)
                {
                    await _stop.CancelAsync().ConfigureAwait(false);
                }

                return Step.Failed(BuildStatus.MiscFailure, e.Message);
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                return Step.Failed(BuildStatus.MiscFailure, $"the build of '{drvPath}' was stopped because another build failed");
            }
        }

        private async Task<Step> RealiseUncheckedAsync(StorePath drvPath)
        {
            var token = _stop.Token;
            var derivation = await ReadAsync(drvPath).ConfigureAwait(false);
            if (await NothingToBuildAsync(drvPath, derivation).ConfigureAwait(false) is { } done)
            {
                return done;
            }

            // Inputs first, all at once.
            var inputSteps = derivation.InputDerivations.Keys.Select(RealiseAsync).ToList();
            var inputResults = await Task.WhenAll(inputSteps).ConfigureAwait(false);
            var failed = inputResults.Count(s => !s.Succeeded);
            if (failed > 0)
            {
                return Step.Failed(BuildStatus.DependencyFailed, $"{failed} dependencies of derivation '{drvPath}' failed to build");
            }

            token.ThrowIfCancellationRequested();
            var roots = new List<StorePath>(derivation.InputSources);
            foreach (var ((inputDrv, wanted), result) in derivation.InputDerivations.Zip(inputResults))
            {
                foreach (var name in wanted)
                {
                    if (!result.Outputs.TryGetValue(name, out var path))
                    {
                        return Step.Failed(BuildStatus.MiscFailure, $"derivation '{inputDrv}' has no output '{name}' needed by '{drvPath}'");
                    }

                    roots.Add(path);
                }
            }

            await _view.AddTempRootsAsync(roots, _stop.Token).ConfigureAwait(false); // before their closure is read (as above)
            var (closure, missingInput) = await InputClosureAsync(drvPath, roots).ConfigureAwait(false);
            if (missingInput is not null)
            {
                return missingInput;
            }

            // The declared output paths must be the ones Nix computes, or Kiln would vouch for a false mapping.
            if (!derivation.IsFixedOutput || derivation.Outputs.Count > 1)
            {
                await LoadClosureAsync(drvPath).ConfigureAwait(false);
                IReadOnlyDictionary<string, string> computed;
                lock (_hasherGate)
                {
                    computed = _hasher.ComputeOutputPaths(derivation);
                }

                foreach (var (name, output) in derivation.Outputs)
                {
                    if (computed.TryGetValue(name, out var expected) && expected != output.Path)
                    {
                        return Step.Failed(BuildStatus.InputRejected, $"derivation '{drvPath}' has incorrect output '{output.Path}', should be '{expected}'");
                    }
                }
            }

            var drvRecord = (await _view.GetRecordsAsync([drvPath], token).ConfigureAwait(false))[drvPath];
            var key = BuildScheduler.StepKey(drvPath, drvRecord.Info.NarHash, closure.Values.Select(r => (r.Info.Path, r.Info.NarHash)));
            // Globally trusted only if the .drv and every input are (content-addressed, signed by an operator's key,
            // or built so); trusted by this account if its own keys vouch for the rest. Never mixed: an account's own
            // trust never earns Kiln's build key.
            var all = closure.Values.Select(r => r.Trust).Append(drvRecord.Trust).ToList();
            var trust = all.All(t => t.IsGlobal()) ? PathTrust.Built : all.All(t => t.IsTrustedByAccount()) ? PathTrust.BuiltByAccountTrust : PathTrust.Untrusted;
            return await BuildStepAsync(drvPath, derivation, key, closure.Values.ToList(), trust).ConfigureAwait(false);
        }

        // The step's end when there is nothing Kiln can or needs to build (outputs without static paths, or all
        // outputs already valid); null when it must be built.
        private async Task<Step?> NothingToBuildAsync(StorePath drvPath, Derivation derivation)
        {
            if (derivation.Outputs.Values.Any(o => o.StorePath is null))
            {
                return Step.Failed(BuildStatus.InputRejected, $"derivation '{drvPath}' has content-addressed outputs, which Kiln does not build yet (ca-derivations)");
            }

            var outputs = derivation.Outputs.ToDictionary(o => o.Key, o => o.Value.StorePath!.Value);
            var valid = await _view.QueryValidPathsAsync(outputs.Values.ToList(), _stop.Token).ConfigureAwait(false);
            if (outputs.Values.All(valid.Contains))
            {
                _view.MarkUsed(outputs.Values); // asked for again: its retention counts from now (kept in memory, written in batches)
                return new Step(BuildStatus.AlreadyValid, "", outputs);
            }

            // An account this one trusts may have built or uploaded the outputs, and share them: they are taken from its
            // store. Or an upstream cache of the account may have them: Kiln fetches them instead of building.
            var taken = await _view.TakeSharedAsync(outputs.Values.ToList(), _stop.Token).ConfigureAwait(false);
            if (taken.Count > 0 && outputs.Values.All(o => taken.ContainsKey(o) || valid.Contains(o)))
            {
                KilnMetrics.BuildsSubstituted.Add(1);
                _events.Message($"kiln: took the outputs of '{drvPath}' from the store of account '{taken.Values.First()}', which this account trusts, instead of building it");
                return new Step(BuildStatus.Substituted, "", outputs);
            }

            var substituted = await _view.SubstituteFromUpstreamAsync(outputs.Values.ToList(), _stop.Token, _events.Message).ConfigureAwait(false);
            if (!outputs.Values.All(substituted.Contains))
            {
                return null;
            }

            KilnMetrics.BuildsSubstituted.Add(1);
            _events.Message($"kiln: fetched the outputs of '{drvPath}' from the account's upstream caches instead of building it");
            return new Step(BuildStatus.Substituted, "", outputs);
        }

        // The records of the closure of a build's inputs, and the step's failure when an input is not valid in the view.
        private async Task<(IReadOnlyDictionary<StorePath, PathRecord> Closure, Step? Failure)> InputClosureAsync(StorePath drvPath, IReadOnlyCollection<StorePath> roots)
        {
            var closure = await _view.GetClosureAsync(roots, _stop.Token).ConfigureAwait(false);
            var missing = roots.Where(r => !closure.ContainsKey(r)).ToList();
            if (missing.Count > 0 && (await _view.SubstituteAsync(missing, _stop.Token, _events.Message).ConfigureAwait(false)).Count == missing.Count)
            {
                closure = await _view.GetClosureAsync(roots, _stop.Token).ConfigureAwait(false);
                missing = roots.Where(r => !closure.ContainsKey(r)).ToList();
            }

            return missing.Count == 0
                ? (closure, null)
                : (closure, Step.Failed(BuildStatus.MiscFailure, $"cannot build '{drvPath}': its input '{missing[0]}' is not valid in your store"));
        }

        /// <summary>BuildDerivation: the derivation came whole from the client, its inputs are (the closure of) its sources.</summary>
        public async Task<Step> BuildBasicAsync(StorePath drvPath, Derivation derivation)
        {
            try
            {
                if (await NothingToBuildAsync(drvPath, derivation).ConfigureAwait(false) is { } done)
                {
                    return done;
                }

                // Held before their closure is read: a collection meanwhile could otherwise take an input the client saw as valid.
                await _view.AddTempRootsAsync([.. derivation.InputSources], _stop.Token).ConfigureAwait(false);
                var (closure, missingInput) = await InputClosureAsync(drvPath, derivation.InputSources).ConfigureAwait(false);
                if (missingInput is not null)
                {
                    return missingInput;
                }

                // Nothing proves this derivation is the one its path names, so its build is this account's alone.
                var text = Kiln.Nix.Hashing.NixHash.Compute(Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, ATerm.Print(derivation));
                var key = BuildScheduler.StepKey(drvPath, text, closure.Values.Select(r => (r.Info.Path, r.Info.NarHash)), privateTo: _view.AccountId);
                return await BuildStepAsync(drvPath, derivation, key, closure.Values.ToList(), PathTrust.Untrusted).ConfigureAwait(false);
            }
            catch (KilnException e)
            {
                return Step.Failed(BuildStatus.MiscFailure, e.Message);
            }
        }

        private async Task<Step> BuildStepAsync(StorePath drvPath, Derivation derivation, string key, IReadOnlyList<PathRecord> closure, PathTrust trust)
        {
            var token = _stop.Token;
            var outputs = derivation.Outputs.ToDictionary(o => o.Key, o => o.Value.StorePath!.Value);

            // The inputs are this session's temporary roots while it builds (on every front door's collector): a
            // collection meanwhile must not take what the build reads.
            await _view.AddTempRootsAsync(closure.Select(r => r.Info.Path).ToList(), token).ConfigureAwait(false);
            _view.MarkUsed([.. closure.Select(r => r.Info.Path), .. outputs.Values]);

            // Built before, for anyone, from identical inputs: reuse it (and the build is now this account's too).
            var record = await _scheduler.Builds.FindSuccessfulBuildAsync(key, token).ConfigureAwait(false);
            if (record is not null)
            {
                var stored = record.Outputs.Select(BuildScheduler.FromRecord).ToList();
                if (await AllStoredAsync(stored, token).ConfigureAwait(false))
                {
                    try
                    {
                        await RegisterAsync(drvPath, stored, trust, token).ConfigureAwait(false);
                        await _scheduler.Builds.AddBuildAccountAsync(record.Id, _view.AccountId, token).ConfigureAwait(false);
                        await _scheduler.Builds.TagBuildAsync(record.Id, _view.AccountId, TagsOf(derivation), token).ConfigureAwait(false);
                        KilnMetrics.BuildsReused.Add(1);
                        _events.Message(BuildScheduler.ReusingMessage(drvPath, record.Stopped > 0 ? DateTimeOffset.FromUnixTimeSeconds(record.Stopped) : default));
                        QueuePush(record.Id, outputs.Values, reused: true);
                        return new Step(BuildStatus.Built, "", outputs);
                    }
                    catch (ContentGoneException)
                    {
                        // Collected between the look and the registration: built again below.
                    }
                }
            }

            // The derivation's own KILN_* attributes, where the account reads them, are the narrowest level.
            var limits = _limits.For(derivation.Environment);
            if (await ReusedFailureAsync(drvPath, derivation, key, limits, token).ConfigureAwait(false) is { } failed)
            {
                return failed;
            }

            if (limits.CpuQuotaSeconds > 0 && await _cpuQuota.Value.ConfigureAwait(false) is { } refusal)
            {
                _events.Message(refusal);
                return Step.Failed(BuildStatus.MiscFailure, $"{refusal} (the build of '{drvPath}' was not started)");
            }

            var job = new BuildJob
            {
                DrvPath = drvPath,
                Derivation = derivation,
                Inputs = closure.Select(r => new BuildInput(r.Info.Path, r.Info.NarHash, r.Info.NarSize, r.Info.References.ToList())).ToList(),
                Limits = OperatorLimits(),
            };
            // Twice at most: outputs the collector took before they were registered (a recent build reused, or content
            // another account's paths were the last to name) are built once more.
            for (var attempt = 1; ; attempt++)
            {
                var result = await _scheduler.RunOrJoinAsync(key, job, Requirements(derivation) with { GloballyTrusted = trust.IsGlobal() }, _view.AccountId, TagsOf(derivation), _events, ClientLimits(limits.Apply(_settings)), limits, token).ConfigureAwait(false);
                var outcome = result.Outcome;
                if (!outcome.Succeeded)
                {
                    return Step.Failed(StatusOf(outcome.Failure), FailureMessage(outcome), outcome);
                }

                try
                {
                    await RegisterAsync(drvPath, outcome.Outputs, trust, token).ConfigureAwait(false);
                    if (result.Reused)
                    {
                        // (Counted once registered: a reuse whose content was collected meanwhile is built instead.)
                        KilnMetrics.BuildsReused.Add(1);
                    }

                    QueuePush(result.BuildId, outputs.Values, result.Reused);
                    return new Step(BuildStatus.Built, "", outputs, result.Reused ? null : outcome);
                }
                catch (ContentGoneException e)
                {
                    _scheduler.Forget(key, result);
                    if (attempt == 2)
                    {
                        return Step.Failed(BuildStatus.TransientFailure, $"Kiln built '{drvPath}' twice but {e.Message} both times; try again");
                    }
                }
            }
        }

        // The outputs go to the account's push-to caches, from a queue a background service works through: the client
        // gets its result without waiting for a push, or for the row that queues it.
        private void QueuePush(long buildId, IEnumerable<StorePath> outputs, bool reused)
        {
            if (_limits.PushTo.Count == 0 || (reused && !_limits.PushReused) || _scheduler.Pushes is not { } pushes)
            {
                return;
            }

            if (Interlocked.Exchange(ref _pushNoted, 1) == 0)
            {
                _events.Message($"kiln: the outputs of this session's builds are pushed to the account's push-to caches ({_limits.PushTo.Count}) in the background; 'pushes' in Kiln's shell shows how it goes");
            }

            var names = outputs.Select(o => o.BaseName).ToList();
            var account = _view.AccountId;
            _ = Task.Run(async () =>
            {
                foreach (var target in _limits.PushTo)
                {
                    try
                    {
                        await pushes.AddPushAsync(account, buildId, target, names, CancellationToken.None).ConfigureAwait(false);
                    }
#pragma warning disable CA1031 // A push that cannot be queued must not fail the build: it is logged.
                    catch (Exception e)
#pragma warning restore CA1031
                    {
                        _scheduler.PushNotQueued(buildId, e);
                    }
                }
            }, CancellationToken.None);
        }

        private async Task<bool> AllStoredAsync(IReadOnlyList<BuiltOutput> outputs, CancellationToken token)
        {
            foreach (var output in outputs)
            {
                if (!await _scheduler.Content.HasAsync(output.NarHash, token).ConfigureAwait(false))
                {
                    return false;
                }
            }

            return true;
        }

        // The system and the requiredSystemFeatures (an attribute, or a key of the structured attributes) the agent must have.
        private static JobRequirements Requirements(Derivation derivation)
        {
            var features = new SortedSet<string>(StringComparer.Ordinal);
            if (derivation.Environment.TryGetValue("__json", out var json))
            {
                try
                {
                    using var attributes = JsonDocument.Parse(json);
                    if (attributes.RootElement.ValueKind == JsonValueKind.Object
                        && attributes.RootElement.TryGetProperty("requiredSystemFeatures", out var list) && list.ValueKind == JsonValueKind.Array)
                    {
                        features.UnionWith(list.EnumerateArray().Where(f => f.ValueKind == JsonValueKind.String).Select(f => f.GetString()!));
                    }
                }
                catch (JsonException)
                {
                    // The agent refuses malformed structured attributes with Nix's message.
                }
            }
            else if (derivation.Environment.TryGetValue("requiredSystemFeatures", out var text))
            {
                features.UnionWith(text.Split([' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries));
            }

            var system = derivation.Builder.StartsWith("builtin:", StringComparison.Ordinal) ? "builtin" : derivation.Platform;
            return new JobRequirements(system, features) { Impure = derivation.Environment.TryGetValue("__noChroot", out var noChroot) && noChroot == "1" };
        }

        // The build runs under Kiln's limits: it may be shared by sessions whose clients asked for different ones.
        private BuildLimits OperatorLimits()
        {
            var options = _scheduler.Options;
            return new BuildLimits
            {
                Cores = options.Cores,
                MaxSilentTime = options.MaxSilentTime,
                Timeout = options.Timeout,
                MaxLogSize = options.MaxLogSize,
                MemoryBytes = options.BuildMemory,
                Processes = options.BuildProcesses,
                DiskBytes = options.BuildDisk,
            };
        }

        // Where the account asks for it (reuse-build-failures, reuse-build-timeouts), the step's latest build for the
        // account, if it failed so, answers again: the client gets its error at once and the log of the build it was.
        private async Task<Step?> ReusedFailureAsync(StorePath drvPath, Derivation derivation, string key, SessionLimits limits, CancellationToken token)
        {
            if (!limits.ReuseBuildFailures && !limits.ReuseBuildTimeouts)
            {
                return null;
            }

            List<string> kinds = [.. limits.ReuseBuildFailures ? [nameof(BuildFailureKind.PermanentFailure)] : Array.Empty<string>(),
                .. limits.ReuseBuildTimeouts ? [nameof(BuildFailureKind.TimedOut)] : Array.Empty<string>()];
            if (await _scheduler.Builds.FindFailedBuildAsync(key, _view.AccountId, kinds, token).ConfigureAwait(false) is not { } failed)
            {
                return null;
            }

            await _scheduler.Builds.TagBuildAsync(failed.Id, _view.AccountId, TagsOf(derivation), token).ConfigureAwait(false);
            var timedOut = failed.Failure == nameof(BuildFailureKind.TimedOut);
            _events.Message($"kiln: reusing the failed build {failed.Id} of '{drvPath}' from {DateTimeOffset.FromUnixTimeSeconds(failed.Stopped).UtcDateTime:yyyy-MM-dd HH:mm} UTC " +
                $"({(timedOut ? "reuse-build-timeouts" : "reuse-build-failures")} is on; 'kiln builds log {failed.Id}' shows its log)");
            return Step.Failed(timedOut ? BuildStatus.TimedOut : BuildStatus.PermanentFailure, failed.Error);
        }

        // The client's own limits, which this session applies to its wait (a client may ask for tighter, never looser).
        private static BuildLimits ClientLimits(ClientBuildSettings settings) =>
            new() { MaxSilentTime = settings.MaxSilentTime, Timeout = settings.Timeout, MaxLogSize = settings.MaxLogSize };

        // The session's tags (KILN_TAG_* in its SSH environment) and the derivation's own KILN_TAG_* attributes; the
        // session's win where both name a tag.
        private IReadOnlyList<BuildTag> TagsOf(Derivation derivation)
        {
            var own = BuildTag.FromEnvironment(derivation.Environment);
            return own.Count == 0 ? _tags : BuildTag.Merge(_tags, own);
        }

        private string FailureMessage(BuildOutcome outcome)
        {
            if (outcome.ExitCode is null || _settings.VerboseBuild || outcome.LogTail.Count == 0)
            {
                return outcome.ErrorMessage;
            }

            var tail = outcome.LogTail.TakeLast(10).ToList();
            return $"{outcome.ErrorMessage};\nlast {tail.Count} log lines:\n{string.Concat(tail.Select(l => "> " + l + "\n"))}";
        }

        private static BuildStatus StatusOf(BuildFailureKind failure) => failure switch
        {
            BuildFailureKind.PermanentFailure => BuildStatus.PermanentFailure,
            BuildFailureKind.OutputRejected => BuildStatus.OutputRejected,
            BuildFailureKind.TransientFailure => BuildStatus.TransientFailure,
            BuildFailureKind.InputRejected => BuildStatus.InputRejected,
            BuildFailureKind.TimedOut => BuildStatus.TimedOut,
            BuildFailureKind.LogLimitExceeded => BuildStatus.LogLimitExceeded,
            _ => BuildStatus.MiscFailure,
        };

        private async Task RegisterAsync(StorePath drvPath, IReadOnlyList<BuiltOutput> outputs, PathTrust trust, CancellationToken token)
        {
            var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            var byPath = outputs.ToDictionary(o => o.Path);
            // Siblings first when outputs refer to each other.
            var ordered = Kiln.Nix.Graph.Order(outputs.Select(o => o.Path), p => byPath[p].References.Where(r => r != p), byPath.ContainsKey).Select(p => byPath[p]).ToList();

            var paths = ordered.Select(o =>
            {
                var signatures = new SortedSet<string>(StringComparer.Ordinal);
                if (trust == PathTrust.Built && _scheduler.BuildKey is { } key)
                {
                    signatures.Add(key.Sign(NarInfo.ComputeFingerprint(o.Path, o.NarHash, o.NarSize, o.References)));
                }

                var info = new ValidPathInfo
                {
                    Path = o.Path,
                    Deriver = drvPath,
                    NarHash = o.NarHash,
                    NarSize = o.NarSize,
                    References = new SortedSet<StorePath>(o.References),
                    RegistrationTime = now,
                    Signatures = signatures,
                    ContentAddress = o.ContentAddress,
                };
                return new NewPath(info, Provenance.Built, trust, null);
            }).ToList();
            await _view.RegisterOutputsAsync(paths, token).ConfigureAwait(false);
        }
    }
}
