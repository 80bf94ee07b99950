using System.Globalization;
using System.Net;
using System.Text;
using Kiln.Api;
using Kiln.Store.Accounts;

namespace Kiln.Dashboard;

/// <summary>What a page knows of its visitor: the caller its session's token makes, and the session's CSRF token.</summary>
internal sealed record Visitor(ApiCaller Caller, string Csrf)
{
    public string Account => Caller.Account.Name;

    public bool Can(KeyPermissions permission) => Caller.Can(permission);
}

/// <summary>
/// The dashboard's HTML: every page in one layout (header, navigation, main), every text from the store encoded with
/// <see cref="E"/> — a derivation's name, a tag or a log line is data, never markup.
/// </summary>
internal static class Html
{
    public static string E(string? text) => WebUtility.HtmlEncode(text ?? "");

    /// <summary>A URL's query value.</summary>
    public static string Q(string? text) => Uri.EscapeDataString(text ?? "");

    public static string N(long value) => value.ToString("N0", CultureInfo.InvariantCulture);

    public static string F(double value, string format = "0.##") => value.ToString(format, CultureInfo.InvariantCulture);

    /// <summary>A derivation's name from its path: <c>/nix/store/HASH-hello-2.12.drv</c> → <c>hello-2.12</c>.</summary>
    public static string DrvName(string path)
    {
        var name = path[(path.LastIndexOf('/') + 1)..];
        name = name.Length > 33 && name[32] == '-' ? name[33..] : name;
        return name.EndsWith(".drv", StringComparison.Ordinal) ? name[..^4] : name;
    }

    /// <summary>A build's status as a badge (the words carry the meaning; the colour only repeats it).</summary>
    public static string Badge(string status) => $"<span class=\"badge badge-{E(status)}\">{E(status)}</span>";

    /// <summary>An API time (2026-12-04T15:22:48Z) as pages show it, under a "(UTC)" heading: 2026-12-04 15:22:48.</summary>
    public static string When(string iso) => iso.Replace('T', ' ').TrimEnd('Z');

    public static string Duration(long seconds) => seconds switch
    {
        < 60 => $"{seconds} s",
        < 3600 => $"{seconds / 60} min {seconds % 60} s",
        _ => $"{seconds / 3600} h {seconds % 3600 / 60} min",
    };

    public static string Bytes(long bytes) => Kiln.Protocol.Units.Bytes(bytes);

    public static string Page(string title, string active, Visitor? visitor, string body)
    {
        var html = new StringBuilder();
        html.Append(CultureInfo.InvariantCulture, $"""
            <!DOCTYPE html>
            <html lang="en">
            <head>
            <meta charset="utf-8">
            <meta name="viewport" content="width=device-width, initial-scale=1">
            <meta name="kiln-csrf" content="{E(visitor?.Csrf)}">
            <title>{E(title)} · Kiln</title>
            <link rel="stylesheet" href="{KilnDashboard.Prefix}/assets/app.css">
            <script src="{KilnDashboard.Prefix}/assets/app.js" defer></script>
            </head>
            <body>
            <a class="skip" href="#main">Skip to content</a>
            <header class="top">
            <a class="brand" href="{KilnDashboard.Prefix}/">Kiln</a>
            """);
        if (visitor is not null)
        {
            html.Append("<nav aria-label=\"Sections\"><ul>");
            foreach (var (name, path, shown) in new[]
            {
                ("Queue", "/queue", true), ("Builds", "/builds", true), ("Usage", "/usage", true), ("Account", "/account", true),
                ("Farm", "/farm", visitor.Can(KeyPermissions.ServerRead)),
            })
            {
                if (shown)
                {
                    html.Append(CultureInfo.InvariantCulture, $"<li><a href=\"{KilnDashboard.Prefix}{path}\"{(name == active ? " aria-current=\"page\"" : "")}>{name}</a></li>");
                }
            }

            html.Append(CultureInfo.InvariantCulture, $"""
                </ul></nav>
                <form class="logout" method="post" action="{KilnDashboard.Prefix}/logout">
                <span class="who" title="Account">{E(visitor.Account)}</span>
                <input type="hidden" name="{BrowserSessions.CsrfField}" value="{E(visitor.Csrf)}">
                <button type="submit" class="link">Log out</button>
                </form>
                """);
        }

        html.Append(CultureInfo.InvariantCulture, $"""
            </header>
            <main id="main">
            {body}
            </main>
            </body>
            </html>
            """);
        return html.ToString();
    }

    /// <summary>A table inside a box that scrolls sideways on a narrow screen, not the page.</summary>
    public static string Table(string id, string caption, string[] headers, IEnumerable<string> rows, string empty)
    {
        var html = new StringBuilder();
        html.Append(CultureInfo.InvariantCulture, $"<div class=\"table-wrap\"><table id=\"{id}\"><caption class=\"sr-only\">{E(caption)}</caption><thead><tr>");
        foreach (var header in headers)
        {
            html.Append(CultureInfo.InvariantCulture, $"<th scope=\"col\">{E(header)}</th>");
        }

        html.Append("</tr></thead><tbody>");
        var any = false;
        foreach (var row in rows)
        {
            html.Append(row);
            any = true;
        }

        html.Append(CultureInfo.InvariantCulture, $"</tbody></table><p class=\"empty\" data-empty-for=\"{id}\"{(any ? " hidden" : "")}>{E(empty)}</p></div>");
        return html.ToString();
    }

    /// <summary>One build as a row of the history and recent lists.</summary>
    public static string BuildRow(BuildDocument build) => string.Create(CultureInfo.InvariantCulture, $"""
        <tr><td><a href="{KilnDashboard.Prefix}/builds/{build.Id}">{E(DrvName(build.Derivation))}</a></td><td>{Badge(build.Status)}</td><td><time datetime="{E(build.Started)}">{E(When(build.Started))}</time></td><td>{(build.Status == "running" ? "…" : Duration(build.Seconds))}</td><td>{E(build.Relation)}</td></tr>
        """);

    public static readonly string[] BuildHeaders = ["Derivation", "Status", "Started (UTC)", "Took", "Relation"];
}
