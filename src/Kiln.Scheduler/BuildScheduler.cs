using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Kiln.Agent;
using Kiln.Nix.Hashing;
using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Worker;
using Kiln.Store;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Logging;

namespace Kiln.Scheduler;

/// <summary>
/// Kiln's one scheduler: every session's build requests become steps, each identified by its derivation and the NAR
/// hashes of its whole input closure (<see cref="StepKey"/>). A step already built successfully, for anyone, is
/// reused; one in flight is joined; otherwise it runs on the executor when a slot is free. Each session gets its own
/// <see cref="IWorkerBuilder"/> (<see cref="ForSession"/>), which walks its request's derivation graph.
/// </summary>
public sealed partial class BuildScheduler : IDisposable
{
    private readonly Dictionary<string, RunningStep> _running = [];
    private readonly object _runningGate = new();

    // Steps that finished successfully a moment ago, for requests that looked for a build record just before it
    // was written (bounded: cleared when it grows).
    private readonly ConcurrentDictionary<string, StepOutcome> _recent = new();
    private readonly SemaphoreSlim _slots;
    private readonly ILogger _logger;

    public BuildScheduler(KilnStore store, IBuildExecutor executor, SchedulerOptions options, SecretKey? buildKey, ILogger logger)
    {
        Store = store;
        Executor = executor;
        Options = options;
        BuildKey = buildKey;
        _logger = logger;
        _slots = new SemaphoreSlim(Math.Max(1, executor.Slots));
    }

    internal KilnStore Store { get; }

    internal IBuildExecutor Executor { get; }

    internal SchedulerOptions Options { get; }

    /// <summary>Kiln's key, which signs outputs built from trusted inputs.</summary>
    internal SecretKey? BuildKey { get; }

    public void Dispose() => _slots.Dispose();

    /// <summary>The builder for one session, working in its view.</summary>
    public IWorkerBuilder ForSession(StoreView view) => new SessionBuilder(this, view);

    /// <summary>The derivation (by path and content) and the contents of its input closure, as one key.</summary>
    internal static string StepKey(StorePath drvPath, NixHash drvNarHash, IEnumerable<(StorePath Path, NixHash NarHash)> inputs, long? privateTo = null)
    {
        var text = new StringBuilder();
        text.Append(drvPath.FullPath).Append(' ').Append(drvNarHash.ToNix32()).Append('\n');
        if (privateTo is { } account)
        {
            text.Append("account ").Append(account).Append('\n');
        }

        foreach (var (path, narHash) in inputs.OrderBy(i => i.Path))
        {
            text.Append(path.FullPath).Append(' ').Append(narHash.ToNix32()).Append('\n');
        }

        return Nix32.Encode(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    /// <summary>Runs the step with this key, or joins it if it is already running.</summary>
    internal Task<StepOutcome> RunOrJoinAsync(string key, BuildJob job, long accountId, IBuildEvents events, CancellationToken cancellationToken)
    {
        RunningStep? step;
        lock (_runningGate)
        {
            if (_recent.TryGetValue(key, out var done))
            {
                return Task.FromResult(done with { Reused = true });
            }

            if (!_running.TryGetValue(key, out step))
            {
                step = new RunningStep(key, job.DrvPath, Options.JoinBacklogLines, LogPath(job.DrvPath));
                step.Completion = RunStepAsync(step, job, accountId);
                _running.Add(key, step);
            }
        }

        return step.JoinAsync(events, cancellationToken);
    }

    /// <summary>Where the log of a build of <paramref name="drvPath"/> is kept.</summary>
    public string LogPath(StorePath drvPath) => Path.Combine(Options.LogDirectory, drvPath.BaseName[..2], drvPath.BaseName[2..]);

    private async Task<StepOutcome> RunStepAsync(RunningStep step, BuildJob job, long accountId)
    {
        await Task.Yield();
        BuildOutcome outcome;
        try
        {
            await _slots.WaitAsync(step.Cancellation).ConfigureAwait(false);
            try
            {
                outcome = await Executor.BuildAsync(job, step, step.Cancellation).ConfigureAwait(false);
            }
            finally
            {
                _slots.Release();
            }
        }
        catch (OperationCanceledException)
        {
            outcome = new BuildOutcome { Failure = BuildFailureKind.MiscFailure, ErrorMessage = $"the build of '{job.DrvPath}' was cancelled" };
        }
#pragma warning disable CA1031 // a failure of Kiln's is reported as the build's, never lost
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogBuildError(_logger, job.DrvPath.FullPath, e);
            outcome = new BuildOutcome { Failure = BuildFailureKind.MiscFailure, ErrorMessage = $"Kiln failed to build '{job.DrvPath}': {e.Message}" };
        }
        finally
        {
            step.Dispose();
        }

        long id = 0;
        try
        {
            id = await Store.Metadata.RecordBuildAsync(new BuildRecord
            {
                StepKey = step.Key,
                DrvPath = job.DrvPath.BaseName,
                AccountId = accountId,
                Succeeded = outcome.Succeeded,
                Failure = outcome.Failure == BuildFailureKind.None ? "" : outcome.Failure.ToString(),
                Error = outcome.ErrorMessage,
                Started = outcome.StartTime.ToUnixTimeSeconds(),
                Stopped = outcome.StopTime.ToUnixTimeSeconds(),
                CpuUserMicroseconds = outcome.CpuUser is { } user ? user.Ticks / 10 : null,
                CpuSystemMicroseconds = outcome.CpuSystem is { } system ? system.Ticks / 10 : null,
                PeakMemory = outcome.PeakMemoryBytes,
                OutputsJson = JsonSerializer.Serialize(outcome.Outputs.Select(StoredOutput.From).ToList(), SchedulerJson.Default.ListStoredOutput),
            }, CancellationToken.None).ConfigureAwait(false);
        }
        finally
        {
            lock (_runningGate)
            {
                _running.Remove(step.Key);
                if (outcome.Succeeded)
                {
                    if (_recent.Count > 10_000)
                    {
                        _recent.Clear();
                    }

                    _recent[step.Key] = new StepOutcome(outcome, id, Reused: false);
                }
            }
        }

        LogBuildDone(_logger, job.DrvPath.FullPath, outcome.Succeeded ? "built" : outcome.Failure.ToString(), (outcome.StopTime - outcome.StartTime).TotalSeconds);
        return new StepOutcome(outcome, id, Reused: false);
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "build of {DrvPath} failed inside Kiln")]
    private static partial void LogBuildError(ILogger logger, string drvPath, Exception exception);

    [LoggerMessage(Level = LogLevel.Information, Message = "{DrvPath}: {Result} in {Seconds:0.000} s")]
    private static partial void LogBuildDone(ILogger logger, string drvPath, string result, double seconds);
}

/// <summary>A build output as the build record keeps it, for reuse by later identical requests.</summary>
internal sealed record StoredOutput(string Name, string Path, string NarHash, long NarSize, List<string> References, string? Ca)
{
    public static StoredOutput From(BuiltOutput output) => new(output.Name, output.Path.FullPath, output.NarHash.ToString(HashFormat.Nix32, true),
        output.NarSize, output.References.Select(r => r.FullPath).ToList(), output.ContentAddress?.ToString());

    public BuiltOutput ToBuiltOutput() => new(Name, StorePath.Parse(Path), NixHash.ParseAnyPrefixed(NarHash), NarSize,
        References.Select(StorePath.Parse).ToList(), Ca is null ? null : ContentAddress.Parse(Ca));
}

[System.Text.Json.Serialization.JsonSerializable(typeof(List<StoredOutput>))]
internal sealed partial class SchedulerJson : System.Text.Json.Serialization.JsonSerializerContext;
