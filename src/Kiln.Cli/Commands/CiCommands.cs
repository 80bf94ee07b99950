using System.CommandLine;
using System.Net.Http.Headers;
using System.Text.Json;

namespace Kiln.Cli.Commands;

/// <summary><c>kiln ci summary</c>: a CI job's builds, from a Kiln server's API, as Markdown for the job's summary page.</summary>
internal static class CiCommands
{
    public static Command Ci()
    {
        var server = new Option<string>("--server") { Description = "The Kiln server's HTTP address (http://HOST:PORT or https://…).", Required = true };
        var tokenFile = new Option<string?>("--token-file") { Description = "A file holding a token with build:read (default: the KILN_TOKEN environment variable)." };
        var tag = new Option<string?>("--tag") { Description = "The builds a tag selects: name=value, as KILN_TAG_<NAME>=value gave them (KILN_TAG_CI_RUN=7: ci-run=7)." };
        var since = new Option<string?>("--since") { Description = "Only builds started at or after this time (2026-12-01, 2026-12-01T12:00:00Z, Unix seconds)." };
        var until = new Option<string?>("--until") { Description = "Only builds started before this time." };
        var format = new Option<string>("--format") { Description = "markdown or json.", DefaultValueFactory = _ => "markdown" };
        format.AcceptOnlyFromAmong("markdown", "json");
        var summary = new Command("summary", "Print what the tagged builds came to: built, reused, failed, CPU and build time, the slowest, the failures with links to their logs (good for a day, no token needed).")
        {
            server, tokenFile, tag, since, until, format,
        };
        summary.SetAction(async (result, cancellationToken) =>
        {
            if (!Uri.TryCreate(result.GetValue(server), UriKind.Absolute, out var serverUri) || serverUri.Scheme is not ("http" or "https"))
            {
                throw new CommandException($"'{result.GetValue(server)}' is not an http:// or https:// address");
            }

            var token = (result.GetValue(tokenFile) is { } file ? File.ReadAllText(file) : Environment.GetEnvironmentVariable("KILN_TOKEN"))?.Trim()
                ?? throw new CommandException("give a token: --token-file FILE, or KILN_TOKEN in the environment");
            var query = new List<string> { "format=" + result.GetValue(format) };
            foreach (var (name, value) in new[] { ("tag", result.GetValue(tag)), ("since", result.GetValue(since)), ("until", result.GetValue(until)) })
            {
                if (value is not null)
                {
                    query.Add($"{name}={Uri.EscapeDataString(value)}");
                }
            }

            using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(2) };
            // Under the address as given, path included (a Kiln behind https://host/kiln/ is asked there, not at the host's root).
            using var request = new HttpRequestMessage(HttpMethod.Get, new Uri(serverUri.ToString().TrimEnd('/') + "/api/v1/builds/summary?" + string.Join('&', query)));
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            HttpResponseMessage response;
            try
            {
                response = await http.SendAsync(request, cancellationToken).ConfigureAwait(false);
            }
            catch (HttpRequestException e)
            {
                throw new CommandException($"cannot reach {serverUri}: {e.Message}");
            }

            using (response)
            {
                var body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
                if (!response.IsSuccessStatusCode)
                {
                    throw new CommandException($"{serverUri} answered {(int)response.StatusCode}: {Detail(body)}");
                }

                Console.Out.Write(body.EndsWith('\n') ? body : body + "\n");
                return 0;
            }
        });
        return new Command("ci", "Summaries for CI jobs.") { summary };
    }

    // A problem document's sentence, or the body as it came.
    private static string Detail(string body)
    {
        try
        {
            using var problem = JsonDocument.Parse(body);
            return problem.RootElement.TryGetProperty("detail", out var detail) ? detail.GetString() ?? body : body;
        }
        catch (JsonException)
        {
            return body.Trim();
        }
    }
}
