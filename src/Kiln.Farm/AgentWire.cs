using System.Text.Json;
using System.Text.Json.Serialization;
using Kiln.Agent;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Farm;

/// <summary>
/// The agent protocol's control messages (JSON; NAR bytes travel raw). Everything under <see cref="Root"/>; every
/// request carries <c>Authorization: Bearer</c> with an agent token, and all but <c>hello</c> the session it opened.
/// </summary>
public static class AgentWire
{
    public const string Root = "/_kiln/agent/v1";

    /// <summary>The header naming the agent's session.</summary>
    public const string SessionHeader = "X-Kiln-Agent-Session";

    /// <summary>The most bytes a control message may have (a job with a large derivation and closure fits easily).</summary>
    public const int MaxMessageBytes = 64 << 20;

    public static JobMessage ToMessage(string leaseId, long buildId, BuildJob job)
    {
        ArgumentNullException.ThrowIfNull(job);
        return new JobMessage(leaseId, buildId, job.DrvPath.FullPath, job.Derivation.Name, ATerm.Print(job.Derivation),
            job.Inputs.Select(i => new InputMessage(i.Path.FullPath, i.NarHash.ToString(), i.NarSize, i.References.Select(r => r.FullPath).ToList())).ToList(),
            new LimitsMessage(job.Limits.Cores, (long)job.Limits.MaxSilentTime.TotalSeconds, (long)job.Limits.Timeout.TotalSeconds, job.Limits.MaxLogSize,
                job.Limits.MemoryBytes, job.Limits.Processes, job.Limits.DiskBytes));
    }

    /// <summary>The job a message describes; a malformed one throws <see cref="Kiln.Nix.NixFormatException"/> or <see cref="FormatException"/>.</summary>
    public static BuildJob ToJob(JobMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        return new BuildJob
        {
            DrvPath = StorePath.Parse(message.DrvPath),
            Derivation = ATerm.Parse(message.Derivation, message.Name),
            Inputs = message.Inputs.Select(i => new BuildInput(StorePath.Parse(i.Path), NixHash.ParseAnyPrefixed(i.NarHash), i.NarSize,
                i.References.Select(StorePath.Parse).ToList())).ToList(),
            Limits = new BuildLimits
            {
                Cores = message.Limits.Cores,
                MaxSilentTime = TimeSpan.FromSeconds(message.Limits.MaxSilentSeconds),
                Timeout = TimeSpan.FromSeconds(message.Limits.TimeoutSeconds),
                MaxLogSize = message.Limits.MaxLogSize,
                MemoryBytes = message.Limits.MemoryBytes,
                Processes = message.Limits.Processes,
                DiskBytes = message.Limits.DiskBytes,
            },
        };
    }

    public static OutcomeMessage ToMessage(BuildOutcome outcome)
    {
        ArgumentNullException.ThrowIfNull(outcome);
        return new OutcomeMessage(outcome.Failure.ToString(), outcome.ErrorMessage,
            outcome.Outputs.Select(o => new OutputMessage(o.Name, o.Path.FullPath, o.NarHash.ToString(), o.NarSize, o.References.Select(r => r.FullPath).ToList(),
                o.ContentAddress?.ToString())).ToList(),
            outcome.StartTime.ToUnixTimeMilliseconds(), outcome.StopTime.ToUnixTimeMilliseconds(),
            outcome.CpuUser is { } user ? user.Ticks / 10 : null, outcome.CpuSystem is { } system ? system.Ticks / 10 : null, outcome.PeakMemoryBytes, outcome.ExitCode,
            outcome.LogTail.ToList(), outcome.OutOfMemory);
    }

    public static BuildOutcome ToOutcome(OutcomeMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        if (!Enum.TryParse<BuildFailureKind>(message.Failure, ignoreCase: false, out var failure) || !Enum.IsDefined(failure))
        {
            throw new FormatException($"unknown failure kind '{message.Failure}'");
        }

        return new BuildOutcome
        {
            Failure = failure,
            ErrorMessage = message.Error,
            Outputs = message.Outputs.Select(o => new BuiltOutput(o.Name, StorePath.Parse(o.Path), NixHash.ParseAnyPrefixed(o.NarHash), o.NarSize,
                o.References.Select(StorePath.Parse).ToList(), o.ContentAddress is { } ca ? ContentAddress.Parse(ca) : null)).ToList(),
            StartTime = DateTimeOffset.FromUnixTimeMilliseconds(message.StartedMs),
            StopTime = DateTimeOffset.FromUnixTimeMilliseconds(message.StoppedMs),
            CpuUser = message.CpuUserMicroseconds is { } user ? TimeSpan.FromTicks(user * 10) : null,
            CpuSystem = message.CpuSystemMicroseconds is { } system ? TimeSpan.FromTicks(system * 10) : null,
            PeakMemoryBytes = message.PeakMemory,
            ExitCode = message.ExitCode,
            LogTail = message.LogTail,
            OutOfMemory = message.OutOfMemory,
        };
    }

    public static T Read<T>(ReadOnlySpan<byte> json, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type) =>
        JsonSerializer.Deserialize(json, type) ?? throw new JsonException("the message is null");
}

/// <summary>An agent introduces itself (<c>POST hello</c>).</summary>
public sealed record HelloMessage(string Name, IReadOnlyList<string> Systems, IReadOnlyList<string> Features, int Slots, int Cores, long MemoryBytes,
    long InputCacheBytes, string Version);

/// <summary>The server's answer to <c>hello</c>: the session to name from now on and the rhythm it expects.</summary>
public sealed record WelcomeMessage(string Session, int HeartbeatMilliseconds, int LeaseMilliseconds);

/// <summary>A job leased to the agent (the answer to <c>POST claim</c>).</summary>
public sealed record JobMessage(string Lease, long BuildId, string DrvPath, string Name, string Derivation, IReadOnlyList<InputMessage> Inputs, LimitsMessage Limits);

public sealed record InputMessage(string Path, string NarHash, long NarSize, IReadOnlyList<string> References);

public sealed record LimitsMessage(int Cores, long MaxSilentSeconds, long TimeoutSeconds, long MaxLogSize, long MemoryBytes, int Processes, long DiskBytes);

/// <summary><c>POST heartbeat</c>: the leases the agent still works on, and how it is doing.</summary>
public sealed record HeartbeatMessage(IReadOnlyList<string> Leases, int SlotsBusy, long InputCacheBytes);

/// <summary>The answer to a heartbeat: leases the agent must stop (cancelled, or taken back).</summary>
public sealed record HeartbeatReply(IReadOnlyList<string> Stop);

/// <summary><c>POST leases/ID/log</c>: the build began (once), and lines of its log in order.</summary>
public sealed record LogMessage(bool Running, IReadOnlyList<string> Lines);

/// <summary><c>POST leases/ID/complete</c>: how the build ended; outputs' NARs were put first.</summary>
public sealed record OutcomeMessage(string Failure, string Error, IReadOnlyList<OutputMessage> Outputs, long StartedMs, long StoppedMs,
    long? CpuUserMicroseconds, long? CpuSystemMicroseconds, long? PeakMemory, int? ExitCode, IReadOnlyList<string> LogTail, bool OutOfMemory = false);

public sealed record OutputMessage(string Name, string Path, string NarHash, long NarSize, IReadOnlyList<string> References, string? ContentAddress);

/// <summary><c>POST leases/ID/abandon</c>: the agent gives the job back without an outcome.</summary>
public sealed record AbandonMessage(string Reason);

/// <summary>An error answer: what was wrong, for the agent's log.</summary>
public sealed record ErrorMessage(string Error);

// Nullable annotations are enforced: a null where the message type has none is malformed, not a crash later.
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    RespectNullableAnnotations = true, RespectRequiredConstructorParameters = true)]
[JsonSerializable(typeof(HelloMessage))]
[JsonSerializable(typeof(WelcomeMessage))]
[JsonSerializable(typeof(JobMessage))]
[JsonSerializable(typeof(HeartbeatMessage))]
[JsonSerializable(typeof(HeartbeatReply))]
[JsonSerializable(typeof(LogMessage))]
[JsonSerializable(typeof(OutcomeMessage))]
[JsonSerializable(typeof(AbandonMessage))]
[JsonSerializable(typeof(ErrorMessage))]
public sealed partial class AgentJson : JsonSerializerContext;
