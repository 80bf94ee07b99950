using Kiln.Protocol.Worker;

namespace Kiln.Scheduler;

/// <summary>
/// A session's own limits from the settings hierarchy (its account's, its key's, its SSH environment's; zero: none),
/// applied to each request's wait like the client's own: the tighter of the two holds, and Kiln's server-wide limits
/// still hold for the build itself.
/// </summary>
public sealed record SessionLimits(TimeSpan Timeout, TimeSpan MaxSilentTime, long MaxLogSize)
{
    public static SessionLimits None { get; } = new(TimeSpan.Zero, TimeSpan.Zero, 0);

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

    private static long Tighter(long a, long b) => a <= 0 ? b : b <= 0 ? a : Math.Min(a, b);
}
