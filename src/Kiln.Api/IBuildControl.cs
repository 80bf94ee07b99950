using Kiln.Nix.StorePaths;

namespace Kiln.Api;

/// <summary>
/// What the API asks of the scheduler (the port's one implementation adapts <c>BuildScheduler</c> in Kiln.Server, so
/// the API does not depend on the scheduler's project).
/// </summary>
public interface IBuildControl
{
    /// <summary>
    /// Cancels build <paramref name="buildId"/> for <paramref name="account"/>: the account's requests waiting for it
    /// end with an error, here and (asked through the database) on the other front doors; the build stops unless
    /// another account still waits for it (one the account's client left running for nobody stops too). False when
    /// nothing of the account's waits for it on any front door.
    /// </summary>
    Task<bool> CancelAsync(long buildId, long account, CancellationToken cancellationToken);

    /// <summary>
    /// Cancels <paramref name="account"/>'s requests for <paramref name="drvPath"/>, whatever their build's state (a build
    /// waiting for the account's limit has no record to cancel by), here and on the other front doors. Returns how many
    /// requests ended here plus how many of the other front doors' builds they were asked to cancel.
    /// </summary>
    Task<int> CancelDerivationAsync(StorePath drvPath, long account, CancellationToken cancellationToken);

    /// <summary>The builds for <paramref name="account"/> that this front door and the others run or have in line.</summary>
    Task<QueueDocument> QueueAsync(long account, CancellationToken cancellationToken);

    /// <summary>The farm: agents, slots, the whole queue and throughput (the operator's view), on every front door.</summary>
    Task<FarmDocument> FarmAsync(CancellationToken cancellationToken);
}
