namespace Kiln.Protocol.Tests;

/// <summary>20.1: what waits for a slow client is bounded in bytes as well as lines (a line may be a megabyte).</summary>
public class PendingLogTests
{
    [Fact]
    public void Lines_beyond_the_byte_or_line_bound_are_dropped_until_the_client_takes_some()
    {
        var pending = new PendingLog();
        var megabyte = new string('x', 1 << 20);
        var admitted = Enumerable.Range(0, 20).Count(_ => pending.TryAdd(megabyte));
        Assert.Equal(8, admitted); // 8 MiB, not 20 lines' worth
        Assert.False(pending.TryAdd("short"));
        pending.Taken(megabyte);
        Assert.True(pending.TryAdd("short"));

        var lines = new PendingLog();
        Assert.Equal(PendingLog.MaxLines, Enumerable.Range(0, PendingLog.MaxLines + 5).Count(_ => lines.TryAdd("a line")));
    }
}
