using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Logging;

namespace Kiln.Scheduler;

// Several front doors on one database: each knows only its own clients' requests. Each publishes its queue on the
// board and carries out the cancels asked of it there, so a listing or a cancel through any front door (a load
// balancer picks one) reaches an account's builds on all of them.
public sealed partial class BuildScheduler
{
    /// <summary>The front doors' shared queue board, when several may share the database (null: this process is the only one).</summary>
    public IQueueBoard? Board { get; init; }

    /// <summary>
    /// Until <paramref name="stopping"/>: publishes this front door's queue on the <see cref="Board"/> each
    /// <see cref="SchedulerOptions.QueueShareInterval"/> it changed (and renews it now and then, so it does not lapse),
    /// and carries out the cancels other front doors were asked for this one's requests. Withdraws it at the end.
    /// <paramref name="farm"/> gives this front door's farm as the operator's API shows it, published with the queue.
    /// </summary>
    public async Task ShareQueueAsync(CancellationToken stopping, Func<string>? farm = null)
    {
        if (Board is not { } board)
        {
            return;
        }

        var started = false;
        List<BoardEntry>? published = null;
        var publishedWaiting = -1;
        string? publishedFarm = null;
        var renewed = 0L;
        long? forgotten = null;
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                try
                {
                    if (!started)
                    {
                        // Cancels left for an earlier process under this name (the name outlives a restart) were meant
                        // for requests that ended with it; dropped before this one publishes anything to be asked about.
                        await board.TakeCancelsAsync(Options.FrontDoor, stopping).ConfigureAwait(false);
                        started = true;
                    }

                    var now = await ClockAsync().ConfigureAwait(false);
                    var (waiting, listed) = Listing(null);
                    List<BoardEntry> entries = [.. listed.Select(l => l.Step.For(l.Account))];
                    // A renewal publishes everything again: a publication forgotten meanwhile (this front door cut off
                    // from the database for an hour) comes back whole.
                    var renewal = Environment.TickCount64 - renewed >= Options.QueueShareLife.TotalMilliseconds / 3;
                    var changed = renewal || published is null || !entries.SequenceEqual(published);
                    var farmNow = farm?.Invoke();
                    var farmChanged = renewal || farmNow != publishedFarm;
                    if (changed || farmChanged || waiting != publishedWaiting)
                    {
                        // The entries only when they changed: a busy line's count moves every second, its builds less often.
                        await board.PublishQueueAsync(Options.FrontDoor, changed ? entries : null, waiting, farmChanged ? farmNow : null,
                            now + (long)Options.QueueShareLife.TotalSeconds, stopping).ConfigureAwait(false);
                        (published, publishedWaiting, publishedFarm, renewed) = (entries, waiting, farmNow, Environment.TickCount64);
                    }

                    if (forgotten is not { } at || Environment.TickCount64 - at >= 60_000)
                    {
                        await board.ForgetLapsedAsync(now - 3600, stopping).ConfigureAwait(false);
                        forgotten = Environment.TickCount64;
                    }

                    foreach (var cancel in await board.TakeCancelsAsync(Options.FrontDoor, stopping).ConfigureAwait(false))
                    {
                        Interlocked.Increment(ref _cancelsTaken);
                        if (cancel.BuildId is { } id)
                        {
                            Cancel(id, cancel.Account);
                        }
                        else if (StorePath.TryParse(cancel.DrvPath, out var drvPath))
                        {
                            CancelDerivation(drvPath, cancel.Account);
                        }
                    }
                }
#pragma warning disable CA1031 // the database unreachable for a moment: the board is a courtesy, tried again next round
                catch (Exception e) when (e is not OperationCanceledException || !stopping.IsCancellationRequested)
#pragma warning restore CA1031
                {
                    LogBoardError(_logger, e);
                }

                await Task.Delay(Options.QueueShareInterval, stopping).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
        }

        try
        {
            await board.PublishQueueAsync(Options.FrontDoor, [], 0, null, 0, CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // stopping with the database away: the publication lapses by itself
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogBoardError(_logger, e);
        }
    }

    /// <summary>
    /// <paramref name="account"/>'s builds on the other front doors, as they last published them (null: no other front
    /// door can exist).
    /// </summary>
    public Task<BoardView?> ElsewhereAsync(long account, CancellationToken cancellationToken) =>
        ReadElsewhereAsync<BoardView?>(async (board, now) => await board.ReadBoardAsync(account, Options.FrontDoor, now, cancellationToken).ConfigureAwait(false),
            null, cancellationToken);

    /// <summary>The farms the other front doors published (<see cref="ShareQueueAsync"/>), by front door; empty when none can exist or the board cannot be read.</summary>
    public Task<IReadOnlyList<(string FrontDoor, string Farm)>> FarmsElsewhereAsync(CancellationToken cancellationToken) =>
        ReadElsewhereAsync(async (board, now) => await board.ReadFarmsAsync(Options.FrontDoor, now, cancellationToken).ConfigureAwait(false),
            (IReadOnlyList<(string, string)>)[], cancellationToken);

    // A read of what the other front doors published, at the database's time; none when no other front door can exist,
    // or when the board cannot be read (the database away for a moment: this front door's own part still answers).
    private async Task<T> ReadElsewhereAsync<T>(Func<IQueueBoard, long, Task<T>> read, T none, CancellationToken cancellationToken)
    {
        if (Board is not { } board)
        {
            return none;
        }

        try
        {
            return await read(board, await ClockAsync().ConfigureAwait(false)).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // the board unreadable for a moment: logged, and answered without the others
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
#pragma warning restore CA1031
        {
            LogBoardError(_logger, e);
            return none;
        }
    }

    // How many cancels other front doors asked of this one were taken (tests wait for them).
    private int _cancelsTaken;

    internal int CancelsTaken => Volatile.Read(ref _cancelsTaken);

    /// <summary>
    /// Asks the other front doors holding <paramref name="account"/>'s requests for build <paramref name="buildId"/>
    /// (or, when it is null, for <paramref name="drvPath"/>) to cancel them; returns how many of their published entries
    /// it asked about. They carry it out within a <see cref="SchedulerOptions.QueueShareInterval"/>. Throws when the
    /// board cannot be read or written: the caller decides whether what it cancelled itself is answer enough.
    /// </summary>
    public async Task<int> CancelElsewhereAsync(long account, long? buildId, StorePath? drvPath, CancellationToken cancellationToken)
    {
        if (Board is not { } board)
        {
            return 0;
        }

        var now = await ClockAsync().ConfigureAwait(false);
        var view = await board.ReadBoardAsync(account, Options.FrontDoor, now, cancellationToken).ConfigureAwait(false);
        var drv = drvPath?.ToString();
        var matched = view.Entries.Where(e => buildId is { } id ? e.Entry.BuildId == id : e.Entry.DrvPath == drv).ToList();
        foreach (var owner in matched.Select(e => e.Owner).Distinct(StringComparer.Ordinal))
        {
            // Not given up halfway when the caller goes: the asks already made stand, so the rest are made too.
            await board.AskCancelAsync(owner, account, buildId, buildId is null ? drv : null, now, CancellationToken.None).ConfigureAwait(false);
        }

        return matched.Count;
    }

    /// <summary>Logs that the board could not be reached for a request answered from this front door alone.</summary>
    public void BoardUnreachable(Exception exception) => LogBoardError(_logger, exception);

    [LoggerMessage(EventId = LogEvents.QueueBoardFailed, Level = LogLevel.Warning, Message = "the queue could not be shared with other front doors")]
    private static partial void LogBoardError(ILogger logger, Exception exception);
}

/// <summary>The words the API and the queue board use for a <see cref="QueuedState"/>.</summary>
internal static class QueuedStates
{
    public static string Name(this QueuedState state) => state switch
    {
        QueuedState.Running => "running",
        QueuedState.Waiting => "waiting",
        QueuedState.NoAgent => "no-agent",
        QueuedState.AccountLimit => "account-limit",
        _ => "preparing",
    };
}
