using System.Globalization;
using System.Text;
using Kiln.Store;
using Kiln.Store.Metadata;

namespace Kiln.Api;

/// <summary>What a CI job's builds came to: counts by outcome, time, the slowest builds and the failures with links to their logs.</summary>
/// <param name="Built">Builds this account's requests started that succeeded.</param>
/// <param name="Reused">Successful builds the requests got without building: another request's or account's build joined or reused.</param>
/// <param name="Truncated">More builds matched than a summary counts (<see cref="Summaries.MaxBuilds"/>).</param>
public sealed record SummaryDocument(string? Tag, int Builds, int Built, int Reused, int Failed, int Running, double CpuSeconds, long BuildSeconds, bool Truncated,
    IReadOnlyList<BuildDocument> Slowest, IReadOnlyList<FailureDocument> Failures);

/// <summary>A failed build in a summary, with a link to its log (signed, when the summary was made over HTTP) and to its dashboard page.</summary>
public sealed record FailureDocument(long Id, string Derivation, string Failure, string Error, string? Log)
{
    /// <summary>The build's page on the dashboard (the reader logs in there), when the summary was made over HTTP.</summary>
    public string? Page { get; init; }
}

/// <summary>Summaries of the builds a query selects in a view: the API's <c>/builds/summary</c>, the shell's and the CLI's <c>ci summary</c>.</summary>
public static class Summaries
{
    public const int MaxBuilds = 10_000;

    private const int Slowest = 5;

    public static async Task<SummaryDocument> SummarizeAsync(StoreView view, BuildQuery query, Func<long, Task<string?>> logLink, CancellationToken cancellationToken,
        Func<long, string>? page = null)
    {
        ArgumentNullException.ThrowIfNull(view);
        ArgumentNullException.ThrowIfNull(logLink);
        var (builds, truncated) = await BuildListing.ReadAsync(view, query, MaxBuilds, cancellationToken).ConfigureAwait(false);
        var documents = builds.Select(b => BuildDocument.Of(b, view.AccountId)).ToList();
        var failures = new List<FailureDocument>();
        foreach (var failed in documents.Where(d => d.Status == "failed"))
        {
            failures.Add(new FailureDocument(failed.Id, failed.Derivation, failed.Failure, failed.Error, await logLink(failed.Id).ConfigureAwait(false))
            {
                Page = page?.Invoke(failed.Id),
            });
        }

        return new SummaryDocument(query.Tag?.ToString(), documents.Count,
            documents.Count(d => d.Status == "built" && d.Relation == "started"), documents.Count(d => d.Status == "built" && d.Relation == "shared"),
            failures.Count, documents.Count(d => d.Status == "running"), Math.Round(documents.Sum(d => d.CpuUserSeconds + d.CpuSystemSeconds), 2),
            documents.Sum(d => d.Seconds), truncated, [.. documents.Where(d => d.Status != "running").OrderByDescending(d => d.Seconds).Take(Slowest)], failures);
    }

    // " ([log](…) · [build](…))": the links a failure has (they are Kiln's own URLs, not text a builder chose).
    private static string Links(FailureDocument failure)
    {
        var links = new[] { failure.Log is null ? null : $"[log]({failure.Log})", failure.Page is null ? null : $"[build]({failure.Page})" }.OfType<string>().ToList();
        return links.Count == 0 ? "" : $" ({string.Join(" · ", links)})";
    }

    /// <summary>The summary as Markdown, for a CI job's summary page (GitHub's <c>$GITHUB_STEP_SUMMARY</c>, GitLab's reports).</summary>
    public static string Markdown(SummaryDocument summary)
    {
        ArgumentNullException.ThrowIfNull(summary);
        var text = new StringBuilder();
        var culture = CultureInfo.InvariantCulture;
        text.Append(culture, $"### Kiln builds{(summary.Tag is null ? "" : $" for `{Code(summary.Tag)}`")}\n\n");
        text.Append("| built | reused | failed | running | CPU time | build time |\n|---:|---:|---:|---:|---:|---:|\n");
        text.Append(culture, $"| {summary.Built} | {summary.Reused} | {summary.Failed} | {summary.Running} | {Duration(summary.CpuSeconds)} | {Duration(summary.BuildSeconds)} |\n");
        if (summary.Truncated)
        {
            text.Append(culture, $"\n(the first {MaxBuilds} builds only)\n");
        }

        if (summary.Failures.Count > 0)
        {
            text.Append("\n#### Failed\n\n");
            foreach (var failure in summary.Failures)
            {
                var error = failure.Error.Length > 0 ? $": {Escape(failure.Error)}" : "";
                text.Append(culture, $"- `{Code(Name(failure.Derivation))}`{error}{Links(failure)}\n");
            }
        }

        if (summary.Slowest.Count > 0)
        {
            text.Append("\n#### Slowest\n\n");
            foreach (var build in summary.Slowest)
            {
                text.Append(culture, $"- `{Code(Name(build.Derivation))}` {Duration(build.Seconds)} ({build.Status}{(build.Relation == "shared" ? ", reused" : "")})\n");
            }
        }

        return text.ToString();
    }

    private static string Name(string derivation) => derivation.Length > 44 && derivation.StartsWith("/nix/store/", StringComparison.Ordinal) ? derivation[44..] : derivation;

    // What a build's error or a tag says is partly the builder's to choose: it stays one line of plain text — no control
    // characters (a terminal's escapes), no table cell break, code span, link, image or HTML.
    private static string Escape(string text) => Plain(text, escape: true);

    // Inside a code span Markdown takes every character as it is but a backtick, which would end it.
    private static string Code(string text) => Plain(text, escape: false);

    private static string Plain(string text, bool escape)
    {
        var plain = new StringBuilder(text.Length);
        foreach (var c in text.ReplaceLineEndings(" "))
        {
            if (char.IsControl(c) || char.GetUnicodeCategory(c) == UnicodeCategory.Format) // escapes, and text-direction overrides
            {
                continue;
            }

            if (escape && c is '|' or '[' or ']' or '(' or ')' or '<' or '>' or '!' or '*' or '_' or '\\' or '#')
            {
                plain.Append('\\');
            }

            plain.Append(c == '`' ? '\'' : c);
        }

        return plain.ToString();
    }

    private static string Duration(double seconds) => seconds switch
    {
        < 60 => string.Create(CultureInfo.InvariantCulture, $"{seconds:0.#} s"),
        < 3600 => string.Create(CultureInfo.InvariantCulture, $"{Math.Floor(seconds / 60)} min {seconds % 60:0} s"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{Math.Floor(seconds / 3600)} h {Math.Floor(seconds % 3600 / 60)} min"),
    };
}
