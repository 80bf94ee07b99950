using System.Collections.Concurrent;

namespace Kiln.Store.Blobs;

/// <summary>
/// The temporary files blob writers still use. The cleaning of abandoned temporary files goes by age, and a batch's
/// first NARs wait for its commit for as long as the client takes to send the rest (a large closure over a slow link:
/// longer than the grace period): the cleaning passes these over, or the commit would find its files gone.
/// </summary>
internal sealed class LiveFiles
{
    private readonly ConcurrentDictionary<string, byte> _files = new(StringComparer.Ordinal);

    /// <summary>Marks <paramref name="path"/> in use until <see cref="Remove"/>; returns it.</summary>
    public string Add(string path)
    {
        _files[path] = 0;
        return path;
    }

    public void Remove(string path) => _files.TryRemove(path, out _);

    public bool Contains(string path) => _files.ContainsKey(path);
}
