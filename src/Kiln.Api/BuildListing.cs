using Kiln.Store;
using Kiln.Store.Metadata;

namespace Kiln.Api;

/// <summary>Every build a query selects in a view, page by page, up to a bound: what summaries and usage reports read.</summary>
internal static class BuildListing
{
    private const int Page = 1000;

    /// <summary>The first <paramref name="max"/> builds (newest first), and whether more matched.</summary>
    public static async Task<(IReadOnlyList<BuildRecord> Builds, bool Truncated)> ReadAsync(StoreView view, BuildQuery query, int max, CancellationToken cancellationToken)
    {
        var builds = new List<BuildRecord>();
        while (true)
        {
            // One more than the bound is asked for, so a listing of exactly max builds is told apart from a longer one.
            var page = await view.ListBuildsAsync(query with { Limit = Math.Min(Page, max + 1 - builds.Count), Before = builds.Count == 0 ? query.Before : builds[^1].Id },
                cancellationToken).ConfigureAwait(false);
            builds.AddRange(page);
            if (builds.Count > max)
            {
                return (builds.GetRange(0, max), true);
            }

            if (page.Count < Page)
            {
                return (builds, false);
            }
        }
    }
}
