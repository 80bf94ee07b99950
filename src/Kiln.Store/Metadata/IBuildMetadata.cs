using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Store.Metadata;

/// <summary>An output a build produced: its NAR is in the blob store under <see cref="NarHash"/>.</summary>
public sealed record BuildOutputRecord(string Name, StorePath Path, NixHash NarHash, long NarSize, IReadOnlyList<StorePath> References, ContentAddress? ContentAddress);

/// <summary>A build Kiln ran or is running. Times are Unix seconds.</summary>
public sealed record BuildRecord
{
    public long Id { get; init; }

    public required string StepKey { get; init; }

    /// <summary>The derivation's base name.</summary>
    public required string DrvPath { get; init; }

    /// <summary>The account whose request started the build.</summary>
    public required long AccountId { get; init; }

    /// <summary>Still running (no outcome yet).</summary>
    public bool Running { get; init; }

    public bool Succeeded { get; init; }

    public string Failure { get; init; } = "";

    public string Error { get; init; } = "";

    /// <summary>When it was asked for (Unix seconds): it may have waited in line before it ran.</summary>
    public long Started { get; init; }

    /// <summary>When it began to run on its agent (null: still waiting, never ran, or recorded before this was kept).</summary>
    public long? RanFrom { get; init; }

    /// <summary>
    /// How long a finished build ran: from <see cref="RanFrom"/> when it lies between its start and end (an agent's
    /// clock may be off), else from <see cref="Started"/>.
    /// </summary>
    public long RunSeconds => Math.Max(0, Stopped - (RanFrom is { } ran && ran >= Started && ran <= Stopped ? ran : Started));

    public long Stopped { get; init; }

    public long? CpuUserMicroseconds { get; init; }

    public long? CpuSystemMicroseconds { get; init; }

    public long? PeakMemory { get; init; }

    public IReadOnlyList<BuildOutputRecord> Outputs { get; init; } = [];

    /// <summary>The agent that ran it (empty when none did).</summary>
    public string Agent { get; init; } = "";

    /// <summary>
    /// How many times agents took it: 1 when it ran once; more when an agent was lost while it ran (it went to another)
    /// or its memory grant killed it (it ran again with more).
    /// </summary>
    public int Attempts { get; init; } = 1;
}

/// <summary>Which builds a listing wants: newest first, older than a cursor, by state and start time.</summary>
public sealed record BuildQuery
{
    /// <summary>At most this many.</summary>
    public int Limit { get; init; } = 20;

    /// <summary>Only builds with a smaller id (the last id of the previous page: a cursor that stays put while builds are added).</summary>
    public long? Before { get; init; }

    /// <summary>Only builds in this state.</summary>
    public BuildState? State { get; init; }

    /// <summary>Only builds started at or after this time (Unix seconds).</summary>
    public long? Since { get; init; }

    /// <summary>Only builds started before this time (Unix seconds).</summary>
    public long? Until { get; init; }

    /// <summary>Only builds a request of the listed account (of any account, listing all) tagged so.</summary>
    public BuildTag? Tag { get; init; }

    /// <summary>Only builds whose derivation's name (the store path without its hash) contains this text, ignoring case.</summary>
    public string? NameContains { get; init; }
}

/// <summary>
/// A label a request gave the builds it was for, as <c>name=value</c>: from <c>KILN_TAG_&lt;NAME&gt;=value</c> in an SSH
/// session's environment (the name lower-cased, <c>_</c> read as <c>-</c>: <c>KILN_TAG_CI_RUN=123</c> is <c>ci-run=123</c>).
/// </summary>
public sealed record BuildTag(string Name, string Value)
{
    public const string EnvironmentPrefix = "KILN_TAG_";

    /// <summary>At most this many tags per request; names and values at most <see cref="MaxLength"/> characters.</summary>
    public const int MaxTags = 16;

    public const int MaxLength = 128;

    public override string ToString() => $"{Name}={Value}";

    /// <summary>Parses <c>name=value</c>.</summary>
    /// <exception cref="FormatException">It is not one.</exception>
    public static BuildTag Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var equals = text.IndexOf('=', StringComparison.Ordinal);
        return equals > 0 && Valid(text[..equals], text[(equals + 1)..]) is { } tag
            ? tag
            : throw new FormatException($"'{text}' is not a tag: name=value, the name of letters, digits, '-', '_' and '.', at most {MaxLength} characters each");
    }

    /// <summary><paramref name="first"/>'s tags, then those of <paramref name="then"/> they do not name (the first win), at most <see cref="MaxTags"/>.</summary>
    public static IReadOnlyList<BuildTag> Merge(IReadOnlyList<BuildTag> first, IEnumerable<BuildTag> then)
    {
        ArgumentNullException.ThrowIfNull(first);
        ArgumentNullException.ThrowIfNull(then);
        return [.. first.Concat(then.Where(t => first.All(s => s.Name != t.Name))).Take(MaxTags)];
    }

    /// <summary>The tags in a session's environment (<c>KILN_TAG_*</c>); malformed ones and those past <see cref="MaxTags"/> are left out.</summary>
    public static IReadOnlyList<BuildTag> FromEnvironment(IReadOnlyDictionary<string, string> environment)
    {
        ArgumentNullException.ThrowIfNull(environment);
        return [.. environment.Where(v => v.Key.StartsWith(EnvironmentPrefix, StringComparison.Ordinal))
            .OrderBy(v => v.Key, StringComparer.Ordinal)
            .Select(v => Valid(v.Key[EnvironmentPrefix.Length..].ToLowerInvariant().Replace('_', '-'), v.Value))
            .OfType<BuildTag>().Take(MaxTags)];
    }

    private static BuildTag? Valid(string name, string value) =>
        name.Length is > 0 and <= MaxLength && value.Length <= MaxLength && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')
        && value.All(c => c >= ' ' && c != 0x7f)
            ? new BuildTag(name, value)
            : null;
}

/// <summary>Where a build stands: running, or how it ended.</summary>
public enum BuildState
{
    Running,
    Built,
    Failed,
}

/// <summary>What one finished build used: its peak memory (bytes), CPU time (user and system, µs) and wall time (s).</summary>
public sealed record BuildUsage(long PeakMemory, long CpuMicroseconds, long WallSeconds);

/// <summary>How a build ended, recorded once it has (<see cref="BuildRecord.Attempts"/> for <paramref name="Attempts"/>).</summary>
public sealed record BuildEnd(bool Succeeded, string Failure, string Error, long Stopped, long? CpuUserMicroseconds, long? CpuSystemMicroseconds,
    long? PeakMemory, IReadOnlyList<BuildOutputRecord> Outputs, string Agent = "", int Attempts = 1)
{
    /// <summary>When it began to run on its agent (Unix seconds; null: it never ran, or its agent did not say).</summary>
    public long? RanFrom { get; init; }
}

/// <summary>
/// Builds: a row from the moment a build starts (so it has an id its log and waiting sessions can name), its outcome
/// when it ends, and the accounts it was for — the one that started it, those that joined it while it ran, those whose
/// views got its outputs by reuse. An account sees (lists, reads the log of) exactly the builds it was for.
/// </summary>
public interface IBuildMetadata
{
    /// <summary>Records a build that is starting for <see cref="BuildRecord.AccountId"/>; returns its id.</summary>
    Task<long> StartBuildAsync(string stepKey, string drvPath, long account, long started, CancellationToken cancellationToken);

    /// <summary>
    /// Records how the build ended — once: a build already recorded as ended (abandoned because its front door's claim
    /// lapsed) keeps that record, and a late result is discarded.
    /// </summary>
    Task FinishBuildAsync(long id, BuildEnd outcome, CancellationToken cancellationToken);

    /// <summary>Records that the build is (also) for <paramref name="account"/> (it joined, or reused the outputs).</summary>
    Task AddBuildAccountAsync(long id, long account, CancellationToken cancellationToken);

    /// <summary>Adds the tags a request of <paramref name="account"/> gave the build (kept once each).</summary>
    Task TagBuildAsync(long id, long account, IReadOnlyCollection<BuildTag> tags, CancellationToken cancellationToken);

    /// <summary>The tags <paramref name="account"/>'s requests gave the build, ordered by name and value.</summary>
    Task<IReadOnlyList<BuildTag>> GetBuildTagsAsync(long id, long account, CancellationToken cancellationToken);

    /// <summary>
    /// Marks as failed the builds still recorded as running whose step no live claim covers (their server stopped,
    /// crashed or was cut off, and its claim lapsed); returns how many.
    /// </summary>
    Task<int> AbandonRunningBuildsAsync(string reason, long now, CancellationToken cancellationToken);

    /// <summary>
    /// Claims the step for <paramref name="owner"/> until <paramref name="expires"/>: a new claim, a renewal of its
    /// own, or a claim another owner let lapse (expired before <paramref name="now"/>); false while another owner's
    /// claim is live. Front doors on one database build each step once this way.
    /// </summary>
    Task<bool> ClaimStepAsync(string stepKey, string owner, long expires, long now, CancellationToken cancellationToken);

    /// <summary>
    /// The database's clock, in Unix seconds: what claims' expiry times are measured by, so every front door on one
    /// database reckons a lease alike whatever its own clock says.
    /// </summary>
    Task<long> ClockAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Renews every claim <paramref name="owner"/> still holds on <paramref name="stepKeys"/> (one statement) and
    /// returns those keys: one missing lapsed and was taken by another front door, which builds that step now.
    /// </summary>
    Task<IReadOnlySet<string>> RenewStepClaimsAsync(IReadOnlyCollection<string> stepKeys, string owner, long expires, CancellationToken cancellationToken);

    /// <summary>
    /// Several processes (front doors) may build on this metadata: an account's max-jobs is then counted here
    /// (<see cref="ClaimAccountSlotAsync"/>), not in one process's queue alone. False for SQLite (one server).
    /// </summary>
    bool SharedByFrontDoors { get; }

    /// <summary>
    /// Makes <paramref name="owner"/>'s claim on a step one of <paramref name="account"/>'s running builds if fewer than
    /// <paramref name="maxJobs"/> of its claims, on any front door, are (live at <paramref name="now"/>); true when it is
    /// one. The slot is renewed and released with the claim, and lapses with it.
    /// </summary>
    Task<bool> ClaimAccountSlotAsync(string stepKey, string owner, long account, int maxJobs, long now, CancellationToken cancellationToken);

    /// <summary>How many of the account's slots (<see cref="ClaimAccountSlotAsync"/>) are held at <paramref name="now"/>, on every front door.</summary>
    Task<int> CountAccountSlotsAsync(long account, long now, CancellationToken cancellationToken);

    /// <summary>Releases the owner's claims: those on <paramref name="stepKey"/>, or all of them when it is null (a server starting again).</summary>
    Task ReleaseStepClaimsAsync(string owner, string? stepKey, CancellationToken cancellationToken);

    /// <summary>The latest successful build with this step key (the derivation and its inputs' contents), if any.</summary>
    Task<BuildRecord?> FindSuccessfulBuildAsync(string stepKey, CancellationToken cancellationToken);

    /// <summary>The build with that id, if it was for <paramref name="account"/>.</summary>
    Task<BuildRecord?> GetBuildAsync(long account, long id, CancellationToken cancellationToken);

    /// <summary>
    /// Which of <paramref name="ids"/> still have a build record, whoever they were for (one query); not the builds an
    /// account's deletion emptied (<see cref="IAccountMetadata.DeleteAccountAsync"/>), which keep only their id.
    /// </summary>
    Task<IReadOnlySet<long>> FindBuildIdsAsync(IReadOnlyCollection<long> ids, CancellationToken cancellationToken);

    /// <summary>The builds <paramref name="query"/> selects, newest first; of those for one account, or of all when <paramref name="account"/> is null.</summary>
    Task<IReadOnlyList<BuildRecord>> ListBuildsAsync(long? account, BuildQuery query, CancellationToken cancellationToken);

    /// <summary>
    /// What the latest <paramref name="limit"/> successful builds of a package (its derivation name without version,
    /// <see cref="PackageNames.Of"/>) used, newest first; builds that did not report their memory are left out.
    /// </summary>
    Task<IReadOnlyList<BuildUsage>> RecentUsageAsync(string packageName, int limit, CancellationToken cancellationToken);

    /// <summary>
    /// The CPU time (user and system, microseconds) of the builds <paramref name="account"/>'s requests started at or
    /// after <paramref name="since"/> (Unix seconds) — what its CPU quota counts, as its usage report does.
    /// </summary>
    Task<long> CpuMicrosecondsSinceAsync(long account, long since, CancellationToken cancellationToken);

    /// <summary>
    /// The latest build of the step that ended with one of <paramref name="failures"/> (failure kinds) and was for
    /// <paramref name="account"/>; null when there is none, or a later build of it succeeded.
    /// </summary>
    Task<BuildRecord?> FindFailedBuildAsync(string stepKey, long account, IReadOnlyList<string> failures, CancellationToken cancellationToken);

    /// <summary>The latest build of the derivation (base name) that was for one of <paramref name="accounts"/>; successful ones first.</summary>
    Task<BuildRecord?> FindLatestBuildAsync(IReadOnlyList<long> accounts, string drvPath, CancellationToken cancellationToken);
}

public static class BuildMetadataExtensions
{
    /// <summary>The latest builds, newest first; of those for one account, or of all when <paramref name="account"/> is null.</summary>
    public static Task<IReadOnlyList<BuildRecord>> ListBuildsAsync(this IBuildMetadata builds, long? account, int limit, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(builds);
        return builds.ListBuildsAsync(account, new BuildQuery { Limit = limit }, cancellationToken);
    }
}
