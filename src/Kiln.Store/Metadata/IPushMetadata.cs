namespace Kiln.Store.Metadata;

/// <summary>Where a push stands: waiting (first try or a retry), done, or given up.</summary>
public enum PushState
{
    Queued,
    Done,
    Failed,
}

/// <summary>
/// One push of a build's outputs (and their closure) to one of the account's <c>push-to</c> targets: its target's URL
/// as the account wrote it (no secrets: credentials live in the account's netrc), the outputs' base names, how many
/// tries it took, how many paths the last one uploaded (the rest were there already), and the last error.
/// </summary>
public sealed record PushRecord(long Id, long AccountId, long BuildId, string Target, IReadOnlyList<string> Paths, PushState State, int Attempts,
    long NextAttempt, long Uploaded, string Error, long Created, long Finished);

/// <summary>
/// The queue of pushes to accounts' own caches. A front door claims due pushes (a claim is a lease: it makes the row
/// due again after a while, so a push a crashed front door was doing is tried again by another), and reports each as
/// done, to be retried at a time, or failed.
/// </summary>
public interface IPushMetadata
{
    /// <summary>Queues a push, due at once; returns its id.</summary>
    Task<long> AddPushAsync(long account, long build, string target, IReadOnlyList<string> paths, CancellationToken cancellationToken);

    /// <summary>
    /// Claims up to <paramref name="limit"/> queued pushes due at <paramref name="now"/>, none of <paramref name="skip"/>'s
    /// accounts' (those the caller is pushing for already): each is counted as tried once more and not due again before
    /// <paramref name="leaseUntil"/>. Two front doors never claim the same row at once.
    /// </summary>
    Task<IReadOnlyList<PushRecord>> ClaimPushesAsync(long now, long leaseUntil, int limit, CancellationToken cancellationToken, IReadOnlyCollection<long>? skip = null);

    /// <summary>
    /// Records the end of try <paramref name="attempt"/>: done (<paramref name="message"/> empty), to be tried again at
    /// <paramref name="retryAt"/> (<see cref="PushState.Queued"/>), or failed for good. Only that try's claim is ended:
    /// a front door whose lease ran out (and whose row another claimed since) changes nothing.
    /// </summary>
    Task FinishPushAsync(long id, int attempt, PushState state, long uploaded, string message, long retryAt, CancellationToken cancellationToken);

    /// <summary>Gives a claimed push back untried (it is due at <paramref name="due"/>, its try not counted).</summary>
    Task ReleasePushAsync(long id, int attempt, long due, CancellationToken cancellationToken);

    /// <summary>Removes pushes that ended (done or failed) before <paramref name="before"/>; returns how many.</summary>
    Task<int> PrunePushesAsync(long before, CancellationToken cancellationToken);

    /// <summary>The account's pushes, newest first: all of them, or one build's (<paramref name="build"/> other than 0).</summary>
    Task<IReadOnlyList<PushRecord>> GetPushesAsync(long account, long build, int limit, CancellationToken cancellationToken);
}
