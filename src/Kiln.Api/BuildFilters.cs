using System.Globalization;
using Kiln.Protocol;
using Kiln.Store.Metadata;

namespace Kiln.Api;

/// <summary>The filters of a build listing (/builds, /builds/summary, /usage and the dashboard's history) as texts: status, tag, since, until.</summary>
public static class BuildFilters
{
    /// <summary>A build query from the filters' texts as a request gives them.</summary>
    /// <exception cref="KilnException">A filter is not valid (Invalid), with what it should be.</exception>
    public static BuildQuery Parse(string? status, string? tag, string? since, string? until) => new()
    {
        State = status switch
        {
            null => null,
            "running" => BuildState.Running,
            "built" => BuildState.Built,
            "failed" => BuildState.Failed,
            _ => throw Invalid("status is running, built or failed"),
        },
        Tag = tag is null ? null : ParseTag(tag),
        Since = Time(since, "since"),
        Until = Time(until, "until"),
    };

    private static BuildTag ParseTag(string text)
    {
        try
        {
            return BuildTag.Parse(text);
        }
        catch (FormatException e)
        {
            throw Invalid(e.Message);
        }
    }

    private static long? Time(string? text, string name)
    {
        if (text is null)
        {
            return null;
        }

        if (long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var unix))
        {
            return unix;
        }

        return DateTimeOffset.TryParse(text, CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var time)
            ? time.ToUnixTimeSeconds()
            : throw Invalid($"{name} is a date (2026-12-01, 2026-12-01T12:00:00Z) or Unix seconds");
    }

    private static KilnException Invalid(string message) => new(ErrorKind.Invalid, message);
}
