namespace Kiln.Store.Logs;

/// <summary>
/// The log port: each build's log, by build id — a log belongs to one build, never to a <c>.drv</c> path, so no later
/// build or upload can overwrite or expose another's. Appended while the build runs, read from an offset, followed
/// live. Who may read which build's log is decided by the view (<see cref="StoreView"/>), from the builds an account
/// was for. The directory store (<see cref="FileBuildLogStore"/>) is the embedded default; several front doors share
/// finished logs through the bucket (<see cref="SharedBuildLogStore"/>).
/// </summary>
public interface IBuildLogStore
{
    /// <summary>Starts the log of a build; only this writer writes it.</summary>
    IBuildLogWriter Create(long buildId);

    /// <summary>
    /// The build has ended and its writer is disposed: its log is whole. Front doors that share a bucket make it
    /// readable by the others here; the directory store has nothing to do.
    /// </summary>
    Task SealAsync(long buildId, CancellationToken cancellationToken);

    /// <summary>The log from byte <paramref name="offset"/> on, as far as it is written; null when the build has none.</summary>
    Task<Stream?> OpenReadAsync(long buildId, long offset, CancellationToken cancellationToken);

    /// <summary>Deletes the build's log (its build record is gone: the account it was for was deleted); nothing when it has none.</summary>
    Task DeleteAsync(long buildId, CancellationToken cancellationToken);

    /// <summary>The log's lines from the start, then each new one as it is written, until the writer is done.</summary>
    IAsyncEnumerable<string> FollowAsync(long buildId, CancellationToken cancellationToken);
}

/// <summary>Appends lines to one build's log.</summary>
public interface IBuildLogWriter : IDisposable
{
    void AppendLine(string line);
}
