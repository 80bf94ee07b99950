using System.Collections.Concurrent;
using Kiln.Nix.StorePaths;

namespace Kiln.Store.Gc;

/// <summary>
/// Temporary roots: paths a live session is using (AddTempRoot, and every path it uploaded), which the garbage
/// collector must not delete from that account's view while the session lasts. Kept in memory: they die with the
/// session, and with the server.
/// </summary>
public sealed class TempRoots
{
    private readonly ConcurrentDictionary<long, (long Account, ConcurrentDictionary<StorePath, byte> Paths)> _sessions = new();
    private long _nextSession;

    /// <summary>Registers a session; dispose the result when it ends.</summary>
    public SessionRoots Open(long account)
    {
        var id = Interlocked.Increment(ref _nextSession);
        _sessions[id] = (account, new ConcurrentDictionary<StorePath, byte>());
        return new SessionRoots(this, id);
    }

    /// <summary>The temp roots of every live session of an account, with a name per session.</summary>
    public IReadOnlyList<KeyValuePair<string, StorePath>> For(long account) =>
        _sessions.Where(s => s.Value.Account == account)
            .SelectMany(s => s.Value.Paths.Keys.Select(p => new KeyValuePair<string, StorePath>($"{{temp:session-{s.Key}}}", p)))
            .ToList();

    internal void Add(long session, StorePath path)
    {
        if (_sessions.TryGetValue(session, out var entry))
        {
            entry.Paths.TryAdd(path, 0);
        }
    }

    internal void Close(long session) => _sessions.TryRemove(session, out _);

    /// <summary>One session's handle on its temp roots.</summary>
    public sealed class SessionRoots(TempRoots owner, long id) : IDisposable
    {
        public void Add(StorePath path) => owner.Add(id, path);

        public void Dispose() => owner.Close(id);
    }
}
