using System.Globalization;
using Kiln.Store;
using Kiln.Store.Metadata;

namespace Kiln.Api;

/// <summary>What an account used: its store now, and per day or month the builds its requests started and their time.</summary>
/// <param name="Storage">The account's view now: content other accounts hold too counts here as well.</param>
/// <param name="Truncated">More builds matched than usage counts (<see cref="UsageReports.MaxBuilds"/>).</param>
public sealed record UsageDocument(string By, StorageDocument Storage, IReadOnlyList<UsagePeriod> Periods, bool Truncated);

public sealed record StorageDocument(int Paths, long NarBytes);

/// <param name="Start">The day (2026-12-01) or month (2026-12) the builds started in.</param>
/// <param name="Builds">Builds the account's requests started (shared ones cost the account nothing and are not counted).</param>
public sealed record UsagePeriod(string Start, int Builds, int Succeeded, double CpuHours, double WallHours);

/// <summary>Usage reports from a view's build records: the API's <c>/usage</c>.</summary>
public static class UsageReports
{
    public const int MaxBuilds = 100_000;

    public static async Task<UsageDocument> ReportAsync(StoreView view, BuildQuery query, bool byMonth, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(view);
        ArgumentNullException.ThrowIfNull(query);
        var (builds, truncated) = await BuildListing.ReadAsync(view, query, MaxBuilds, cancellationToken).ConfigureAwait(false);
        var format = byMonth ? "yyyy-MM" : "yyyy-MM-dd";
        var periods = builds.Where(b => b.AccountId == view.AccountId)
            .GroupBy(b => DateTimeOffset.FromUnixTimeSeconds(b.Started).ToString(format, CultureInfo.InvariantCulture))
            .OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g => new UsagePeriod(g.Key, g.Count(), g.Count(b => b.Succeeded),
                Math.Round(g.Sum(b => (b.CpuUserMicroseconds ?? 0) + (b.CpuSystemMicroseconds ?? 0)) / 3.6e9, 4),
                Math.Round(g.Where(b => !b.Running).Sum(b => b.Stopped - b.Started) / 3600.0, 4)))
            .ToList();
        var (paths, narBytes) = await view.StorageAsync(cancellationToken).ConfigureAwait(false);
        return new UsageDocument(byMonth ? "month" : "day", new StorageDocument(paths, narBytes), periods, truncated);
    }
}
