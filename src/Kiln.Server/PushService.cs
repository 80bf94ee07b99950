using Kiln.Protocol;
using Kiln.Push;
using Kiln.Store;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kiln.Server;

/// <summary>
/// The running server's pushes to accounts' own caches (push-to): every second it runs what the queue has due (a
/// build just ended, a retry's time came), on this front door or whichever claims it first.
/// </summary>
public sealed partial class PushService(KilnStore store, ServerOptions options, ILoggerFactory loggers) : BackgroundService
{
    private readonly ILogger _logger = loggers.CreateLogger("Kiln.Push");

    /// <summary>How often the records of ended pushes are pruned.</summary>
    public static TimeSpan PruneInterval { get; } = TimeSpan.FromHours(1);

    /// <summary>How long the service waits when nothing was due.</summary>
    public static TimeSpan Idle { get; } = TimeSpan.FromSeconds(1);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        Directory.CreateDirectory(store.Options.TemporaryDirectory);
        using var runner = new PushRunner(store, options.Push with { TemporaryDirectory = store.Options.TemporaryDirectory }, _logger);
        long pruneAt = 0;
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                // The records of ended pushes are kept a while (the shell and the API show them), not for ever.
                if (Environment.TickCount64 >= pruneAt)
                {
                    pruneAt = Environment.TickCount64 + (long)PruneInterval.TotalMilliseconds;
                    await runner.PruneAsync(stoppingToken).ConfigureAwait(false);
                }

                if (await runner.StartDueAsync(stoppingToken).ConfigureAwait(false) > 0)
                {
                    continue;
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
#pragma warning disable CA1031 // A busy database must not stop the pushes for good: logged, and tried again.
            catch (Exception e)
#pragma warning restore CA1031
            {
                LogQueueFailed(_logger, e);
            }

            try
            {
                await runner.WaitForSlotAsync(Idle, stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }

        // (The pushes running see the same token: they stop, and their leases bring them back.)
        await runner.DrainAsync().ConfigureAwait(false);
    }

    [LoggerMessage(EventId = LogEvents.PushQueueFailed, Level = LogLevel.Warning, Message = "the push queue could not be read")]
    private static partial void LogQueueFailed(ILogger logger, Exception exception);
}
