using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kiln.Server;

/// <summary>
/// Hands memory back after a burst. A large NAR pushed or pulled, or a busy hour of builds, grows the runtime's heap,
/// and the runtime keeps what it grew to: a server that then idles (most of a CI server's day) would hold it for
/// nothing. Every <see cref="Interval"/>, when resident memory stands <see cref="Growth"/> or more above the least it
/// was since the last trim and the interval allocated almost nothing (the burst is over, so the pause disturbs no
/// one), one aggressive full collection compacts the heap and decommits what is free. Growth a collection cannot give
/// back (native memory) becomes the new floor, so it is not tried again for nothing; and there is at most one trim per
/// <see cref="Gap"/>, so memory that comes and goes outside the heap costs a collection a minute at most.
/// </summary>
public sealed partial class MemoryTrimmer(ILoggerFactory loggers) : BackgroundService
{
    /// <summary>How often resident memory and allocation are looked at.</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(2);

    /// <summary>Growth above the floor worth a collection.</summary>
    public const long Growth = 16L << 20;

    /// <summary>The least time between two trims.</summary>
    public static readonly TimeSpan Gap = TimeSpan.FromMinutes(1);

    /// <summary>Allocation within one interval that still counts as quiet.</summary>
    public const long Quiet = 1L << 20;

    private readonly ILogger _logger = loggers.CreateLogger("Kiln.Server");

    /// <summary>Whether to trim now: <paramref name="resident"/> bytes against the <paramref name="floor"/>, with
    /// <paramref name="allocated"/> bytes allocated in the interval just ended, <paramref name="sinceTrim"/> after the
    /// last trim (null: none yet).</summary>
    public static bool ShouldTrim(long resident, long floor, long allocated, TimeSpan? sinceTrim) =>
        resident - floor >= Growth && allocated < Quiet && (sinceTrim is not { } since || since >= Gap);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var allocatedBefore = GC.GetTotalAllocatedBytes();
        var floor = Environment.WorkingSet;
        long? trimmedAt = null;
        using var timer = new PeriodicTimer(Interval);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
            {
                var allocated = GC.GetTotalAllocatedBytes();
                var resident = Environment.WorkingSet;
                var sinceTrim = trimmedAt is { } at ? TimeSpan.FromMilliseconds(Environment.TickCount64 - at) : (TimeSpan?)null;
                if (ShouldTrim(resident, floor, allocated - allocatedBefore, sinceTrim))
                {
                    trimmedAt = Environment.TickCount64;
                    GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
                    floor = Environment.WorkingSet;
                    LogTrimmed(_logger, resident >> 20, floor >> 20);
                }
                else
                {
                    floor = Math.Min(floor, resident);
                }

                allocatedBefore = allocated;
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "idle after a burst: resident memory {Before} MiB, {After} MiB after a full collection")]
    private static partial void LogTrimmed(ILogger logger, long before, long after);
}
