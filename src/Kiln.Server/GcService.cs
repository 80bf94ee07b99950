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

        // Free space is looked at every minute (or every interval, if that is shorter); the interval counts from the last run.
        var check = options.GcInterval > TimeSpan.Zero && options.GcInterval < options.GcCheckInterval ? options.GcInterval : options.GcCheckInterval;
        var last = DateTimeOffset.UtcNow;
        using var timer = new PeriodicTimer(check);
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
        {
            var due = options.GcInterval > TimeSpan.Zero && DateTimeOffset.UtcNow - last >= options.GcInterval;
            var free = options.GcMinFree > 0 ? FreeBytes() : long.MaxValue;
            if (!due && free >= options.GcMinFree)
            {
                continue;
            }

            try
            {
                var (paths, bytes, blobs) = await store.CollectAllGarbageAsync(null, stoppingToken).ConfigureAwait(false);
                LogCollected(_logger, due ? "its interval came" : "free space ran low", paths, bytes, blobs);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or KilnException)
            {
                LogFailed(_logger, e);
            }

            last = DateTimeOffset.UtcNow;
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

    [LoggerMessage(EventId = LogEvents.GarbageCollectionFailed, Level = LogLevel.Warning, Message = "garbage collection failed; it is tried again at the next check")]
    private static partial void LogFailed(ILogger logger, Exception exception);
}
