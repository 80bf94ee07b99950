using Kiln.Protocol;
using Kiln.Store;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kiln.Server;

/// <summary>
/// The running server's collection of blobs nothing names (20.3): a blob committed by an upload or build whose
/// registration failed or never came is deleted once it is older than the store's grace period, every
/// <see cref="ServerOptions.BlobSweepInterval"/> — not only by the offline <c>kiln store gc</c>.
/// </summary>
public sealed partial class BlobSweepService(KilnStore store, Kiln.Agent.SandboxExecutor executor, ServerOptions options, ILoggerFactory loggers) : BackgroundService
{
    private readonly ILogger _logger = loggers.CreateLogger("Kiln.Store");

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (options.BlobSweepInterval <= TimeSpan.Zero)
        {
            return;
        }

        using var timer = new PeriodicTimer(options.BlobSweepInterval);
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
        {
            // Each step on its own: one that fails (an unreadable file, the bucket away) leaves the others to run.
            await StepAsync(async () =>
            {
                // With several front doors, whichever comes first in an interval sweeps for all (a little under the
                // interval, so one front door alone is never a tick late for its own turn).
                if (!await store.TakeBlobSweepTurnAsync(options.BlobSweepInterval * 0.9, stoppingToken).ConfigureAwait(false))
                {
                    return;
                }

                var swept = await store.SweepUnnamedBlobsAsync(null, stoppingToken).ConfigureAwait(false);
                if (swept > 0)
                {
                    LogSwept(_logger, swept);
                }
            }).ConfigureAwait(false);

            // Kept files and logs this front door fetched, which another's collector or account deletion removed.
            await StepAsync(async () =>
            {
                var (narFiles, logs) = await store.PruneLocalCopiesAsync(stoppingToken).ConfigureAwait(false);
                if (narFiles + logs > 0)
                {
                    LogPrunedCopies(_logger, narFiles, logs);
                }
            }).ConfigureAwait(false);

            // The embedded agent's unpacked copies of NARs the store no longer holds (collected by any GC since).
            await StepAsync(async () =>
            {
                var pruned = await executor.PruneInputsAsync(stoppingToken).ConfigureAwait(false);
                if (pruned > 0)
                {
                    LogPruned(_logger, pruned);
                }
            }).ConfigureAwait(false);
        }
    }

    private async Task StepAsync(Func<Task> step)
    {
        try
        {
            await step().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or KilnException)
        {
            LogSweepFailed(_logger, e);
        }
    }

    [LoggerMessage(EventId = LogEvents.GarbageCollected, Level = LogLevel.Information, Message = "removed {Count} blobs nothing names")]
    private static partial void LogSwept(ILogger logger, long count);

    [LoggerMessage(EventId = LogEvents.LocalCopiesPruned, Level = LogLevel.Information, Message = "removed {NarFiles} kept NAR files and {Logs} build logs the metadata no longer names")]
    private static partial void LogPrunedCopies(ILogger logger, int narFiles, int logs);

    [LoggerMessage(EventId = LogEvents.InputsPruned, Level = LogLevel.Information, Message = "removed {Count} unpacked inputs whose NARs are gone")]
    private static partial void LogPruned(ILogger logger, int count);

    [LoggerMessage(EventId = LogEvents.BlobSweepFailed, Level = LogLevel.Warning, Message = "the sweep of blobs nothing names failed; it is tried again at the next interval")]
    private static partial void LogSweepFailed(ILogger logger, Exception exception);
}
