using Kiln.Protocol;
using Kiln.Store;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kiln.Server;

/// <summary>
/// Samples every account's storage (its view's paths and NAR bytes) when the server starts and every hour after, as
/// that day's figure: the usage report's storage over time. One statement per sample whatever the number of accounts;
/// several front doors on one database sample the same day's row, the last one wins.
/// </summary>
public sealed partial class StorageSampler(KilnStore store, ILoggerFactory loggers) : BackgroundService
{
    /// <summary>How often a sample is taken (the day's last one stays).</summary>
    public static readonly TimeSpan Interval = TimeSpan.FromHours(1);

    private readonly ILogger _logger = loggers.CreateLogger("Kiln.Store");

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Interval);
        do
        {
            try
            {
                await store.SampleStorageAsync(StorageSample.DayOf(DateTimeOffset.UtcNow), stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // a busy or unreachable database: the next hour's sample is taken all the same
            catch (Exception e)
#pragma warning restore CA1031
            {
                LogFailed(_logger, e);
            }
        }
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false));
    }

    [LoggerMessage(EventId = LogEvents.StorageSampleFailed, Level = LogLevel.Warning, Message = "sampling the accounts' storage failed; it is tried again in an hour")]
    private static partial void LogFailed(ILogger logger, Exception exception);
}
