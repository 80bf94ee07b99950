using System.Globalization;
using Kiln.Protocol;
using Kiln.Store;
using Kiln.Store.Metadata;

namespace Kiln.Api;

/// <summary>What an account used: its store now, and per day or month the builds its requests started and their time.</summary>
/// <param name="Storage">The account's view now: content other accounts hold too counts here as well.</param>
/// <param name="Truncated">More builds matched than usage counts (<see cref="UsageReports.MaxBuilds"/>).</param>
public sealed record UsageDocument(string By, StorageDocument Storage, IReadOnlyList<UsagePeriod> Periods, bool Truncated)
{
    /// <summary>
    /// The account's storage per day or month in the span, oldest first: the last sample the server took in each (it
    /// samples every hour; today's is the figure now). Periods with no sample (no server ran) are left out.
    /// </summary>
    public IReadOnlyList<StoragePeriod> StorageHistory { get; init; } = [];
}

/// <param name="Start">The day (2026-12-01) or month (2026-12).</param>
public sealed record StoragePeriod(string Start, long Paths, long NarBytes);

public sealed record StorageDocument(int Paths, long NarBytes);

/// <param name="Start">The day (2026-12-01) or month (2026-12) the builds started in.</param>
/// <param name="Builds">Builds the account's requests started (shared ones cost the account nothing and are not counted).</param>
/// <param name="WallHours">From when each began to run to its end (for builds recorded before that was kept: from when it was asked for).</param>
public sealed record UsagePeriod(string Start, int Builds, int Succeeded, double CpuHours, double WallHours)
{
    /// <summary>NAR bytes the account's sessions uploaded (paths registered) in the period.</summary>
    public long UploadedBytes { get; init; }

    /// <summary>NAR bytes Kiln sent the account's sessions and HTTP requests in the period (redirects to a bucket not counted).</summary>
    public long DownloadedBytes { get; init; }
}

/// <summary>Usage reports from a view's build records: the API's <c>/usage</c>, the shell's and the CLI's <c>usage</c>.</summary>
public static class UsageReports
{
    /// <summary>The report as the shell and <c>kiln usage</c> print it: the storage now, then a line per day or month.</summary>
    public static string Text(UsageDocument usage)
    {
        ArgumentNullException.ThrowIfNull(usage);
        var builds = usage.Periods.ToDictionary(p => p.Start, StringComparer.Ordinal);
        var stored = usage.StorageHistory.ToDictionary(s => s.Start, StringComparer.Ordinal);
        var text = new System.Text.StringBuilder();
        text.Append(CultureInfo.InvariantCulture,
            $"storage now: {usage.Storage.Paths} paths, {Units.Bytes(usage.Storage.NarBytes)} of NAR (content other accounts hold too counts for each of them)\n");
        text.Append(CultureInfo.InvariantCulture, $"{(usage.By == "month" ? "month  " : "day       "),-10}  {"builds",6}  {"succeeded",9}  {"CPU hours",9}  {"wall hours",10}  {"uploaded",10}  {"downloaded",10}  storage\n");
        foreach (var start in builds.Keys.Union(stored.Keys).Order(StringComparer.Ordinal))
        {
            var period = builds.GetValueOrDefault(start) ?? new UsagePeriod(start, 0, 0, 0, 0);
            text.Append(CultureInfo.InvariantCulture,
                $"{start,-10}  {period.Builds,6}  {period.Succeeded,9}  {period.CpuHours,9:0.####}  {period.WallHours,10:0.####}  {Units.Bytes(period.UploadedBytes),10}  {Units.Bytes(period.DownloadedBytes),10}  {(stored.TryGetValue(start, out var s) ? Units.Bytes(s.NarBytes) : "-")}\n");
        }

        text.Append(CultureInfo.InvariantCulture,
            $"total: {usage.Periods.Sum(p => p.Builds)} builds started ({usage.Periods.Sum(p => p.Succeeded)} succeeded), {usage.Periods.Sum(p => p.CpuHours):0.####} CPU hours, {usage.Periods.Sum(p => p.WallHours):0.####} wall hours, {Units.Bytes(usage.Periods.Sum(p => p.UploadedBytes))} uploaded, {Units.Bytes(usage.Periods.Sum(p => p.DownloadedBytes))} downloaded");
        if (usage.Truncated)
        {
            text.Append(CultureInfo.InvariantCulture, $"\n(more than {MaxBuilds} builds in this span: the newest are counted)");
        }

        return text.ToString();
    }

    public const int MaxBuilds = 100_000;

    /// <summary>Whether a report's <c>by</c> (day, the default, or month) is month.</summary>
    /// <exception cref="KilnException">It is neither (Invalid).</exception>
    public static bool ByMonth(string? by) => by switch
    {
        null or "day" => false,
        "month" => true,
        _ => throw new KilnException(ErrorKind.Invalid, "by is day or month"),
    };

    public static async Task<UsageDocument> ReportAsync(StoreView view, BuildQuery query, bool byMonth, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(view);
        ArgumentNullException.ThrowIfNull(query);
        var (builds, truncated) = await BuildListing.ReadAsync(view, query, MaxBuilds, cancellationToken).ConfigureAwait(false);
        var format = byMonth ? "yyyy-MM" : "yyyy-MM-dd";
        string PeriodOf(long unixSeconds) => DateTimeOffset.FromUnixTimeSeconds(unixSeconds).ToString(format, CultureInfo.InvariantCulture);
        var periods = builds.Where(b => b.AccountId == view.AccountId)
            .GroupBy(b => PeriodOf(b.Started))
            .OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g => new UsagePeriod(g.Key, g.Count(), g.Count(b => b.Succeeded),
                Math.Round(g.Sum(b => (b.CpuUserMicroseconds ?? 0) + (b.CpuSystemMicroseconds ?? 0)) / 3.6e9, 4),
                Math.Round(g.Where(b => !b.Running).Sum(b => b.RunSeconds) / 3600.0, 4)))
            .ToList();
        var (paths, narBytes) = await view.StorageAsync(cancellationToken).ConfigureAwait(false);

        // Storage over the same span: the daily samples, today's replaced by the figure just read.
        var today = StorageSample.DayOf(DateTimeOffset.UtcNow);
        var fromDay = query.Since is { } since ? Math.Max(0, since) / StorageSample.SecondsPerDay : 0;
        var toDay = query.Until is { } until ? (Math.Max(0, until) + StorageSample.SecondsPerDay - 1) / StorageSample.SecondsPerDay : today + 1;

        // Bytes moved, per day: added to the periods the builds gave, and periods of their own where no build started.
        var moved = (await view.TransfersAsync(fromDay, toDay, cancellationToken).ConfigureAwait(false))
            .GroupBy(t => PeriodOf(t.Day * StorageSample.SecondsPerDay))
            .ToDictionary(g => g.Key, g => (Up: g.Sum(t => t.Uploaded), Down: g.Sum(t => t.Downloaded)), StringComparer.Ordinal);
        periods = [.. periods.Select(p => moved.TryGetValue(p.Start, out var m) ? p with { UploadedBytes = m.Up, DownloadedBytes = m.Down } : p)
            .Concat(moved.Where(m => periods.All(p => p.Start != m.Key)).Select(m => new UsagePeriod(m.Key, 0, 0, 0, 0) { UploadedBytes = m.Value.Up, DownloadedBytes = m.Value.Down }))
            .OrderBy(p => p.Start, StringComparer.Ordinal)];
        var samples = (await view.StorageHistoryAsync(fromDay, toDay, cancellationToken).ConfigureAwait(false)).Where(s => s.Day != today).ToList();
        if (today >= fromDay && today < toDay)
        {
            samples.Add(new StorageSample(today, paths, narBytes));
        }

        var history = samples.GroupBy(s => PeriodOf(s.Day * StorageSample.SecondsPerDay))
            .Select(g => g.MaxBy(s => s.Day))
            .Select(s => new StoragePeriod(PeriodOf(s.Day * StorageSample.SecondsPerDay), s.Paths, s.NarBytes))
            .ToList();
        return new UsageDocument(byMonth ? "month" : "day", new StorageDocument(paths, narBytes), periods, truncated) { StorageHistory = history };
    }
}
