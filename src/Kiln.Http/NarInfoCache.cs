using System.Collections.Concurrent;
using Kiln.Nix.StorePaths;

namespace Kiln.Http;

/// <summary>
/// narinfo answers as sent, so that a path asked for again (by every CI runner that needs it) costs a dictionary
/// lookup instead of a database query and a rendering. An answer is kept per view (the accounts the caller reads)
/// and is good until any path record in the store changes or goes (<paramref name="version"/>, the store's
/// <c>PathRecordsVersion</c>: new signatures, deletions), and for <see cref="MaxAge"/> at most. Only found paths are kept: a missing one may
/// arrive at any moment. Bounded: when full, it starts over.
/// <para>
/// An answer kept also vouches, for as long, that its view may read the NAR it names (<see cref="ShowsNar"/>): a Nix
/// client asks for a path's narinfo and then for its NAR, and the second lookup of the same record would only say again
/// what the first did (on PostgreSQL, one more round trip per NAR).
/// </para>
/// </summary>
internal sealed class NarInfoCache(Func<long> version, int capacity = 20_000)
{
    // A bound for what this process cannot see (another server on the same database).
    public static readonly TimeSpan MaxAge = TimeSpan.FromSeconds(30);

    private readonly ConcurrentDictionary<(string View, string HashPart), Entry> _entries = new();
    private readonly ConcurrentDictionary<(string View, string NarHash), Entry> _nars = new();
    private int _added; // since the last clearing: a bound on both dictionaries, without ConcurrentDictionary.Count's taking every lock
    private long _version = version();

    private sealed record Entry(byte[] Body, long Version, long Until, (long Account, StorePath Path)? Owner);

    /// <summary>The version to give <see cref="Add"/>: read it before reading the record.</summary>
    public long Version => version();

    public byte[]? Find(string view, string hashPart) => Find(view, hashPart, out _);

    /// <summary>The answer kept, and whose record it was (the account and path: a read counts as a use of it).</summary>
    public byte[]? Find(string view, string hashPart, out (long Account, StorePath Path)? owner)
    {
        var found = Current(_entries, (view, hashPart), out var entry);
        owner = found ? entry!.Owner : null;
        return found ? entry!.Body : null;
    }

    /// <summary>
    /// Whether an answer kept for <paramref name="view"/> named the NAR with this hash (Nix32, as in its URL), so that
    /// the view may read that NAR without another lookup. The blob itself may still be gone.
    /// </summary>
    public bool ShowsNar(string view, string narHash) => Current(_nars, (view, narHash), out _);

    /// <summary>Keeps an answer for <paramref name="view"/>, and (<paramref name="narHash"/>, Nix32) that it shows that NAR.</summary>
    public void Add(string view, string hashPart, byte[] body, long version, (long Account, StorePath Path)? owner = null, string? narHash = null)
    {
        if (Interlocked.Increment(ref _added) > capacity)
        {
            Clear();
        }

        var entry = new Entry(body, version, Environment.TickCount64 + (long)MaxAge.TotalMilliseconds, owner);
        _entries[(view, hashPart)] = entry;
        if (narHash is not null)
        {
            _nars[(view, narHash)] = entry;
        }
    }

    // An entry of either kind, if it is still good: of the store's current version, and not older than MaxAge.
    private bool Current<TKey>(ConcurrentDictionary<TKey, Entry> entries, TKey key, out Entry? entry)
        where TKey : notnull
    {
        var now = version();
        if (now != Interlocked.Exchange(ref _version, now))
        {
            Clear(); // everything kept is older than the change
        }

        return entries.TryGetValue(key, out entry) && entry.Version == now && Environment.TickCount64 < entry.Until;
    }

    private void Clear()
    {
        Volatile.Write(ref _added, 0);
        _entries.Clear();
        _nars.Clear();
    }
}
