using System.Text.Json;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Wire;

namespace Kiln.Protocol.Worker;

/// <summary>How a build request ended (Nix's <c>BuildResult::Status</c>); 0–2 and 13 are success.</summary>
public enum BuildStatus : ulong
{
    Built = 0,
    Substituted = 1,
    AlreadyValid = 2,
    PermanentFailure = 3,
    InputRejected = 4,
    OutputRejected = 5,
    TransientFailure = 6,
    CachedFailure = 7,
    TimedOut = 8,
    MiscFailure = 9,
    DependencyFailed = 10,
    LogLimitExceeded = 11,
    NotDeterministic = 12,
    ResolvesToAlreadyValid = 13,
    NoSubstituters = 14,
}

/// <summary>The result of building (or finding valid) one derived path.</summary>
public sealed record BuildResult
{
    public required BuildStatus Status { get; init; }

    public string ErrorMessage { get; init; } = "";

    public ulong TimesBuilt { get; init; }

    public bool IsNonDeterministic { get; init; }

    public long StartTime { get; init; }

    public long StopTime { get; init; }

    public TimeSpan? CpuUser { get; init; }

    public TimeSpan? CpuSystem { get; init; }

    /// <summary>Output name → output path, which <c>nix build</c> needs to find what it built (≥ 1.28).</summary>
    public IReadOnlyDictionary<string, StorePath> BuiltOutputs { get; init; } = new Dictionary<string, StorePath>();

    public bool Succeeded => Status is BuildStatus.Built or BuildStatus.Substituted or BuildStatus.AlreadyValid or BuildStatus.ResolvesToAlreadyValid;

    /// <summary>Writes the result as the negotiated version expects it.</summary>
    public void Write(WireOutput output, ProtocolVersion version)
    {
        ArgumentNullException.ThrowIfNull(output);
        // Nix 2.3 knows statuses up to 12 only.
        var status = !version.AtLeast(24) && Status > BuildStatus.NotDeterministic ? BuildStatus.MiscFailure : Status;
        output.WriteU64((ulong)status);
        output.WriteString(ErrorMessage);
        if (version.AtLeast(29))
        {
            output.WriteU64(TimesBuilt);
            output.WriteBool(IsNonDeterministic);
            WriteTimes(output);
        }

        if (version.AtLeast(37))
        {
            WriteOptionalMicroseconds(output, CpuUser);
            WriteOptionalMicroseconds(output, CpuSystem);
        }

        if (version.AtLeast(28))
        {
            WriteBuiltOutputs(output);
        }
    }

    /// <summary>Writes the result as the serve protocol (2.<paramref name="minor"/>) has it: no cpu times.</summary>
    public void WriteServe(WireOutput output, int minor)
    {
        ArgumentNullException.ThrowIfNull(output);
        output.WriteU64((ulong)(Status > BuildStatus.NotDeterministic ? BuildStatus.MiscFailure : Status));
        output.WriteString(ErrorMessage);
        if (minor >= 3)
        {
            output.WriteU64(TimesBuilt);
            output.WriteBool(IsNonDeterministic);
            WriteTimes(output);
        }

        if (minor >= 6)
        {
            WriteBuiltOutputs(output);
        }
    }

    // DrvOutput id → realisation JSON. Clients use the output name after '!'; the hash is a dummy, as in current Nix
    // for input-addressed derivations.
    private void WriteBuiltOutputs(WireOutput output)
    {
        output.WriteU64((ulong)BuiltOutputs.Count);
        foreach (var (name, path) in BuiltOutputs.OrderBy(o => o.Key, StringComparer.Ordinal))
        {
            var id = $"sha256:{new string('0', 64)}!{name}";
            output.WriteString(id);
            output.WriteString(RealisationJson(id, path));
        }
    }

    // Nix reads these as signed numbers that must fit, and refuses the whole reply otherwise ("serialised integer … is
    // too large"): a negative one (no time, a clock before 1970, an agent's bad report) goes out as 0, Nix's "unknown".
    private void WriteTimes(WireOutput output)
    {
        output.WriteU64((ulong)Math.Max(0, StartTime));
        output.WriteU64((ulong)Math.Max(0, StopTime));
    }

    private static void WriteOptionalMicroseconds(WireOutput output, TimeSpan? value)
    {
        output.WriteU64(value is null ? 0UL : 1UL);
        if (value is { } time)
        {
            output.WriteU64((ulong)Math.Max(0, time.Ticks / 10));
        }
    }

    private static string RealisationJson(string id, StorePath path)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("id", id);
            json.WriteString("outPath", path.BaseName);
            json.WriteStartArray("signatures");
            json.WriteEndArray();
            json.WriteStartObject("dependentRealisations");
            json.WriteEndObject();
            json.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}
