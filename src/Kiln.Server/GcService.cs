using Kiln.Protocol;
using Kiln.Store;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kiln.Server;

/// <summary>
/// The running server's garbage collection: every <see cref="ServerOptions.GcInterval"/>, and at once when the data
/// directory's file system has less than <see cref="ServerOptions.GcMinFree"/> free, each account's view loses the
/// paths no root, pin or live session holds (the collector's own rules, as for <c>nix-store --gc</c> through Kiln),
/// then the blobs no view names any more (after the store's grace period, so an upload in flight keeps its blob).
/// Paths registered within <see cref="ServerOptions.GcKeepRecent"/> stay: an HTTP push registers a closure path by
/// path with no session holding the paths already sent.
/// </summary>
public sealed partial class GcService(KilnStore store, ServerOptions options, ILoggerFactory loggers) : BackgroundService
{
    private readonly ILogger _logger = loggers.CreateLogger("Kiln.Store");

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (options.GcInterval <= TimeSpan.Zero && options.GcMinFree <= 0)
        {
            return;
        }

        // Free space is looked at every minute (or every interval, if that is shorter); the interval counts from the
        // start of the last run, on the monotonic clock.
        var check = options.GcInterval > TimeSpan.Zero && options.GcInterval < options.GcCheckInterval ? options.GcInterval : options.GcCheckInterval;
        var lastStart = Environment.TickCount64;
        long quietUntil = 0; // after a run for free space that freed nothing: the next such run waits (it would only repeat)
        using var timer = new PeriodicTimer(check);
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
        {
            var now = Environment.TickCount64;
            // A tick may come a little early: half a check's slack keeps an interval from slipping a whole check.
            var due = options.GcInterval > TimeSpan.Zero && now - lastStart >= (options.GcInterval - check / 2).TotalMilliseconds;
            var low = options.GcMinFree > 0 && now >= quietUntil && FreeBytes() < options.GcMinFree;
            if (!due && !low)
            {
                continue;
            }

            lastStart = now;
            try
            {
                var (paths, bytes, blobs) = await store.CollectAllGarbageAsync(null, stoppingToken, options.GcKeepRecent).ConfigureAwait(false);
                LogCollected(_logger, due ? "its interval came" : "free space ran low", paths, bytes, blobs);
                if (low && paths == 0 && blobs == 0)
                {
                    quietUntil = Environment.TickCount64 + (long)(options.GcCheckInterval * 10).TotalMilliseconds;
                    LogNothingToFree(_logger, options.GcMinFree);
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                // Whatever went wrong (a busy database, a bucket that failed), the server carries on and tries again.
                LogFailed(_logger, e);
            }
        }
    }

    private long FreeBytes()
    {
        try
        {
            return new DriveInfo(options.DataDirectory).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return long.MaxValue; // not measurable: the interval still runs collections
        }
    }

    [LoggerMessage(EventId = LogEvents.GarbageCollected, Level = LogLevel.Information,
        Message = "garbage collection ({Reason}): {Paths} paths ({Bytes} bytes of NAR) left accounts' views; {Blobs} blobs removed")]
    private static partial void LogCollected(ILogger logger, string reason, int paths, long bytes, long blobs);

    [LoggerMessage(EventId = LogEvents.GarbageCollectionFreedNothing, Level = LogLevel.Warning,
        Message = "free space is under --gc-min-free ({MinFree} bytes) and garbage collection freed nothing: pins and roots hold the rest; it is tried again in ten minutes")]
    private static partial void LogNothingToFree(ILogger logger, long minFree);

    [LoggerMessage(EventId = LogEvents.GarbageCollectionFailed, Level = LogLevel.Warning, Message = "garbage collection failed; it is tried again at the next check")]
    private static partial void LogFailed(ILogger logger, Exception exception);
}
