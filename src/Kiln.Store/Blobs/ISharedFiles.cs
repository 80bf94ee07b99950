namespace Kiln.Store.Blobs;

/// <summary>
/// Files every front door on one bucket reads, beside the blobs: finished build logs (<c>logs/&lt;id&gt;.log</c>) and
/// compressed NARs kept as HTTP clients uploaded them (<c>nar-files/&lt;name&gt;</c>). Each front door keeps the ones it
/// uses in its own data directory and puts them here for the others; files here never change once put (a name always
/// means the same content), so one upload each suffices and a copy fetched once stays right.
/// </summary>
public interface ISharedFiles
{
    /// <summary>Puts <paramref name="file"/> under <paramref name="name"/> (replacing what was there: the same content).</summary>
    Task PutFileAsync(string name, string file, CancellationToken cancellationToken);

    /// <summary>Writes the file <paramref name="name"/> to <paramref name="destination"/>; false when there is none.</summary>
    Task<bool> GetFileAsync(string name, string destination, CancellationToken cancellationToken);

    /// <summary>Deletes the file <paramref name="name"/>, if there is one.</summary>
    Task DeleteFileAsync(string name, CancellationToken cancellationToken);
}
