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
    /// end with an error; the build stops unless another account still waits for it (one the account's client left
    /// running for nobody stops too). False when there was nothing of the account's to stop in this process.
    /// </summary>
    bool Cancel(long buildId, long account);

    /// <summary>
    /// Cancels <paramref name="account"/>'s requests in this process for <paramref name="drvPath"/>, whatever their build's
    /// state (a build waiting for the account's limit has no record to cancel by). Returns how many requests ended.
    /// </summary>
    int CancelDerivation(StorePath drvPath, long account);

    /// <summary>The builds for <paramref name="account"/> this process runs or has in line.</summary>
    QueueDocument Queue(long account);

    /// <summary>The farm as this process sees it: agents, slots, the whole queue and throughput (the operator's view).</summary>
    FarmDocument Farm();
}
