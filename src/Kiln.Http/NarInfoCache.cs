using System.Collections.Concurrent;
using Kiln.Nix.StorePaths;

namespace Kiln.Http;

/// <summary>
/// narinfo answers as sent, so that a path asked for again (by every CI runner that needs it) costs a dictionary
/// lookup instead of a database query and a rendering. An answer is kept per view (the accounts the caller reads)
/// and is good until any path record in the store changes or goes (<paramref name="version"/>, the store's
/// <c>PathRecordsVersion</c>: new signatures, deletions), and for <see cref="MaxAge"/> at most. Only found paths are kept: a missing one may
/// arrive at any moment. Bounded: when full, it starts over.
/// </summary>
internal sealed class NarInfoCache(Func<long> version, int capacity = 20_000)
{
    // A bound for what this process cannot see (another server on the same database).
    public static readonly TimeSpan MaxAge = TimeSpan.FromSeconds(30);

    private readonly ConcurrentDictionary<(string View, string HashPart), Entry> _entries = new();
    private long _version = version();

    private sealed record Entry(byte[] Body, long Version, long Until, (long Account, StorePath Path)? Owner);

    /// <summary>The version to give <see cref="Add"/>: read it before reading the record.</summary>
    public long Version => version();

    public byte[]? Find(string view, string hashPart) => Find(view, hashPart, out _);

    /// <summary>The answer kept, and whose record it was (the account and path: a read counts as a use of it).</summary>
    public byte[]? Find(string view, string hashPart, out (long Account, StorePath Path)? owner)
    {
        var now = version();
        if (now != Interlocked.Exchange(ref _version, now))
        {
            _entries.Clear(); // everything kept is older than the change
        }

        var found = _entries.TryGetValue((view, hashPart), out var entry) && entry.Version == now && Environment.TickCount64 < entry.Until;
        owner = found ? entry!.Owner : null;
        return found ? entry!.Body : null;
    }

    public void Add(string view, string hashPart, byte[] body, long version, (long Account, StorePath Path)? owner = null)
    {
        if (_entries.Count >= capacity)
        {
            _entries.Clear();
        }

        _entries[(view, hashPart)] = new Entry(body, version, Environment.TickCount64 + (long)MaxAge.TotalMilliseconds, owner);
    }
}
