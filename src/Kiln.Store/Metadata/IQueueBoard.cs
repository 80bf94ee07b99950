namespace Kiln.Store.Metadata;

/// <summary>
/// Where front doors on one database show each other their queues and pass on cancels. Each front door's scheduler
/// knows only the requests its own clients made; a listing or a cancel reaching another front door (a load balancer
/// picks one at random) is answered from the others' latest publications and carried to the one that holds the
/// request. A publication lives until its expiry, so a front door that went away drops out of every listing.
/// </summary>
public interface IQueueBoard
{
    /// <summary>
    /// Publishes <paramref name="owner"/>'s queue until <paramref name="expires"/>: its entries (replacing the ones it
    /// published before; null keeps them and renews only), how many builds wait in its line, all accounts', and its
    /// farm as the operator's API shows it (a JSON document; null keeps the one published before).
    /// </summary>
    Task PublishQueueAsync(string owner, IReadOnlyCollection<BoardEntry>? entries, int waiting, string? farm, long expires, CancellationToken cancellationToken);

    /// <summary>The farms (<see cref="PublishQueueAsync"/>) of the front doors other than <paramref name="exceptOwner"/> whose publications live at <paramref name="now"/>.</summary>
    Task<IReadOnlyList<(string Owner, string Farm)>> ReadFarmsAsync(string exceptOwner, long now, CancellationToken cancellationToken);

    /// <summary>
    /// <paramref name="account"/>'s entries published by front doors other than <paramref name="exceptOwner"/> and
    /// live at <paramref name="now"/>, with the builds waiting in those front doors' lines (all accounts').
    /// </summary>
    Task<BoardView> ReadBoardAsync(long account, string exceptOwner, long now, CancellationToken cancellationToken);

    /// <summary>
    /// Asks front door <paramref name="owner"/> to cancel <paramref name="account"/>'s requests for build
    /// <paramref name="buildId"/>, or for derivation <paramref name="drvPath"/> when the id is null.
    /// </summary>
    Task AskCancelAsync(string owner, long account, long? buildId, string? drvPath, long now, CancellationToken cancellationToken);

    /// <summary>Takes (and forgets) the cancels asked of <paramref name="owner"/>.</summary>
    Task<IReadOnlyList<BoardCancel>> TakeCancelsAsync(string owner, CancellationToken cancellationToken);

    /// <summary>
    /// Forgets the publications that expired before <paramref name="before"/>, with their entries, and the cancels asked
    /// before it that nobody took (front doors that went away for good: a lost data directory gives a new name).
    /// </summary>
    Task ForgetLapsedAsync(long before, CancellationToken cancellationToken);
}

/// <summary>
/// One of a front door's builds as a listing shows it to <see cref="Account"/>: <see cref="State"/> is the API's word
/// (running, waiting, no-agent, preparing, account-limit); <see cref="BuildId"/> is null before the build has a record.
/// </summary>
public sealed record BoardEntry(long Account, long? BuildId, string DrvPath, string State, int? Position, string? Agent);

/// <summary>What the other front doors published for one account: their entries, each with the front door that holds it.</summary>
public sealed record BoardView(int Waiting, IReadOnlyList<PublishedEntry> Entries);

/// <summary>An entry of front door <see cref="Owner"/>'s publication.</summary>
public sealed record PublishedEntry(string Owner, BoardEntry Entry);

/// <summary>A cancel asked of a front door: by build id, or (id null) by derivation.</summary>
public sealed record BoardCancel(long Account, long? BuildId, string? DrvPath);
