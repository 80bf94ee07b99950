namespace Kiln.Store.Logs;

/// <summary>
/// Where finished build logs are kept for every front door (the bucket several front doors share): a front door reads
/// the log of a build another one ran from here. Logs are immutable once a build ends, so one upload each suffices.
/// </summary>
public interface IBuildLogArchive
{
    /// <summary>Keeps the finished log of <paramref name="buildId"/>, read from <paramref name="file"/>.</summary>
    Task PutLogAsync(long buildId, string file, CancellationToken cancellationToken);

    /// <summary>Writes the log of <paramref name="buildId"/> to <paramref name="destination"/>; false when the archive has none.</summary>
    Task<bool> GetLogAsync(long buildId, string destination, CancellationToken cancellationToken);
}
