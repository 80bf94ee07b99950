using Kiln.Server;

namespace Kiln.Cli.Tests;

/// <summary>When kiln serve hands memory back: after a burst that grew it, once the server is quiet; never mid-burst.</summary>
public sealed class MemoryTrimmerTests
{
    private const long Mib = 1L << 20;

    [Theory]
    [InlineData(140, 107, 0, -1, true)]             // grew 33 MiB, then quiet: trimmed
    [InlineData(123, 107, 512 * 1024, -1, true)]    // 16 MiB up, a little allocation still counts as quiet
    [InlineData(140, 107, 64 * Mib, -1, false)]     // still busy: no pause for anyone in the middle of it
    [InlineData(122, 107, 0, -1, false)]            // less than the growth worth a collection
    [InlineData(100, 107, 0, -1, false)]            // below the floor
    [InlineData(140, 107, 0, 30, false)]            // trimmed half a minute ago: at most one a minute
    [InlineData(140, 107, 0, 60, true)]             // a minute ago
    public void A_burst_is_trimmed_once_it_is_over(long residentMib, long floorMib, long allocated, int secondsSinceTrim, bool trim) =>
        Assert.Equal(trim, MemoryTrimmer.ShouldTrim(residentMib * Mib, floorMib * Mib, allocated,
            secondsSinceTrim < 0 ? null : TimeSpan.FromSeconds(secondsSinceTrim)));
}
