using Kiln.Protocol.Worker;

namespace Kiln.Scheduler;

/// <summary>
/// A session's own limits from the settings hierarchy (its account's, its key's, its SSH environment's; zero: none),
/// applied to each request's wait like the client's own: the tighter of the two holds, and Kiln's server-wide limits
/// still hold for the build itself. The rest shape the builds the session starts (a build joined by others keeps the
/// shape its first request gave it): how many of the account's run at once, the cores and memory each is given, and
/// the account's monthly CPU quota.
/// </summary>
public sealed record SessionLimits(TimeSpan Timeout, TimeSpan MaxSilentTime, long MaxLogSize)
{
    public static SessionLimits None { get; } = new(TimeSpan.Zero, TimeSpan.Zero, 0);

    /// <summary>The most of the account's builds that run at once (zero: no limit but the agents' slots).</summary>
    public int MaxJobs { get; init; }

    /// <summary>The most cores a build is given (zero: the server's <c>--cores</c>).</summary>
    public int MaxCores { get; init; }

    /// <summary>The fewest cores a build is given (zero: the server's <c>--min-cpu</c>).</summary>
    public int MinCores { get; init; }

    /// <summary>The cores a package never built is given (zero: the server's <c>--default-cpu</c>).</summary>
    public int DefaultCores { get; init; }

    /// <summary>The most memory a build may use (zero: the server's <c>--build-memory</c>).</summary>
    public long MaxMemory { get; init; }

    /// <summary>The least memory a build is given (zero: the server's <c>--min-mem</c>).</summary>
    public long MinMemory { get; init; }

    /// <summary>
    /// Whether a build this session waits for goes on when the session's client goes away (its outcome is recorded and
    /// the next request reuses it); otherwise it stops once nobody waits for it.
    /// </summary>
    public bool KeepBuildsRunning { get; init; }

    /// <summary>Whether a derivation whose latest build for the account failed (its builder failed) fails again at once, unbuilt.</summary>
    public bool ReuseBuildFailures { get; init; }

    /// <summary>Whether a derivation whose latest build for the account timed out fails again at once, unbuilt.</summary>
    public bool ReuseBuildTimeouts { get; init; }

    /// <summary>The CPU seconds the account's builds may use in a calendar month, UTC (zero: no quota).</summary>
    public long CpuQuotaSeconds { get; init; }

    /// <summary>The binary caches the outputs of the account's successful builds are pushed to (<c>push-to</c>; none: empty).</summary>
    public IReadOnlyList<string> PushTo { get; init; } = [];

    /// <summary>Whether outputs reused from an earlier build are pushed too (<c>push-reused</c>), not only those built now.</summary>
    public bool PushReused { get; init; }

    /// <summary>The account's or key's <c>tags</c> setting: every build the session asks for gets them.</summary>
    public IReadOnlyList<Kiln.Store.Metadata.BuildTag> Tags { get; init; } = [];

    /// <summary>The session's own tags (<c>KILN_TAG_*</c>) with <see cref="Tags"/>, the session's winning where both name one.</summary>
    public IReadOnlyList<Kiln.Store.Metadata.BuildTag> TagsWith(IReadOnlyList<Kiln.Store.Metadata.BuildTag> session) => Kiln.Store.Metadata.BuildTag.Merge(session, Tags);

    /// <summary>
    /// The limits for one derivation's build, with its own <c>KILN_*</c> attributes as the narrowest level; null where
    /// the account does not read them (<c>settings-from-drv-env</c> off, the default): these limits hold as they are.
    /// </summary>
    public Func<IReadOnlyDictionary<string, string>, SessionLimits>? ForDerivation { get; init; }

    /// <summary>The limits for a derivation with these attributes (<see cref="ForDerivation"/>), or these.</summary>
    public SessionLimits For(IReadOnlyDictionary<string, string> attributes) => ForDerivation is { } derive ? derive(attributes) : this;

    /// <summary>The client's settings, each limit the tighter of the client's and the session's.</summary>
    public ClientBuildSettings Apply(ClientBuildSettings settings)
    {
        ArgumentNullException.ThrowIfNull(settings);
        return settings with
        {
            Timeout = Tighter(settings.Timeout, Timeout),
            MaxSilentTime = Tighter(settings.MaxSilentTime, MaxSilentTime),
            MaxLogSize = Tighter(settings.MaxLogSize, MaxLogSize),
        };
    }

    private static TimeSpan Tighter(TimeSpan a, TimeSpan b) => a <= TimeSpan.Zero ? b : b <= TimeSpan.Zero ? a : a < b ? a : b;

    /// <summary>The tighter of two limits where zero is none.</summary>
    internal static long Tighter(long a, long b) => a <= 0 ? b : b <= 0 ? a : Math.Min(a, b);
}
