namespace Kiln.Protocol;

/// <summary>
/// How much of a build's log may wait for a slow client, in lines and in bytes (a line may be a megabyte): beyond
/// either bound, lines are dropped for that client rather than queued (the build's stored log keeps them all), so a
/// client that stops reading cannot make the server hold a whole log in memory.
/// </summary>
internal sealed class PendingLog
{
    public const int MaxLines = 10_000;

    /// <summary>Counted in UTF-16 characters, which is close enough to bytes for a bound.</summary>
    public const long MaxBytes = 8 << 20;

    private int _lines;
    private long _bytes;

    /// <summary>Counts the line in; false (and nothing counted) if it must be dropped.</summary>
    public bool TryAdd(string line)
    {
        ArgumentNullException.ThrowIfNull(line);
        if (Interlocked.Increment(ref _lines) > MaxLines)
        {
            Interlocked.Decrement(ref _lines);
            return false;
        }

        if (Interlocked.Add(ref _bytes, line.Length) > MaxBytes)
        {
            Interlocked.Add(ref _bytes, -line.Length);
            Interlocked.Decrement(ref _lines);
            return false;
        }

        return true;
    }

    /// <summary>The client has taken the line.</summary>
    public void Taken(string line)
    {
        ArgumentNullException.ThrowIfNull(line);
        Interlocked.Decrement(ref _lines);
        Interlocked.Add(ref _bytes, -line.Length);
    }
}
