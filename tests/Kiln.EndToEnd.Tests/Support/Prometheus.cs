using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// A real Prometheus server (Debian's <c>prometheus</c>) scraping one target every second, with its own temporary
/// directory for configuration and data, killed (by its PID) and removed when disposed.
/// </summary>
public sealed class Prometheus : IDisposable
{
    private const string Binary = "/usr/bin/prometheus";
    private readonly Process _process;
    private readonly string _directory;
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(10) };

    public static bool Available => File.Exists(Binary);

    /// <param name="target">The scraped <c>HOST:PORT</c> (its <c>/metrics</c>).</param>
    /// <param name="bearerToken">A token the scrapes send, or null.</param>
    public Prometheus(string target, string? bearerToken = null)
    {
        _directory = Directory.CreateTempSubdirectory("kiln-test-prometheus-").FullName;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            Port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        File.WriteAllText(Path.Combine(_directory, "prometheus.yml"), $"""
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
            scrape_configs:
              - job_name: kiln
                static_configs:
                  - targets: ['{target}']
            {(bearerToken is null ? "" : $"    authorization:\n      credentials: '{bearerToken}'")}
            """);
        var start = new ProcessStartInfo(Binary)
        {
            UseShellExecute = false,
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        foreach (var argument in new[]
        {
            $"--config.file={Path.Combine(_directory, "prometheus.yml")}", $"--storage.tsdb.path={Path.Combine(_directory, "data")}",
            $"--web.listen-address=127.0.0.1:{Port}",
        })
        {
            start.ArgumentList.Add(argument);
        }

        try
        {
            _process = Process.Start(start)!;
        }
        catch
        {
            Directory.Delete(_directory, recursive: true);
            throw;
        }

        _process.ErrorDataReceived += (_, e) => { if (e.Data is { } line) { lock (_log) { _log.Add(line); } } };
        _process.OutputDataReceived += (_, _) => { };
        _process.BeginErrorReadLine();
        _process.BeginOutputReadLine();
    }

    private readonly List<string> _log = [];

    public int Port { get; }

    /// <summary>What Prometheus logged (for a failing test's message).</summary>
    public string Log
    {
        get
        {
            lock (_log)
            {
                return string.Join('\n', _log.TakeLast(30));
            }
        }
    }

    /// <summary>
    /// Asks Prometheus's query API for <paramref name="query"/> (an instant vector, summed to one value) until
    /// <paramref name="wanted"/> holds of it or <paramref name="timeout"/> passes; returns the last value (null: none).
    /// </summary>
    public async Task<double?> QueryUntilAsync(string query, Func<double, bool> wanted, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        double? last = null;
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                var json = await _http.GetStringAsync($"http://127.0.0.1:{Port}/api/v1/query?query={Uri.EscapeDataString(query)}");
                using var document = JsonDocument.Parse(json);
                var result = document.RootElement.GetProperty("data").GetProperty("result");
                if (result.GetArrayLength() > 0)
                {
                    last = double.Parse(result[0].GetProperty("value")[1].GetString()!, System.Globalization.CultureInfo.InvariantCulture);
                    if (wanted(last.Value))
                    {
                        return last;
                    }
                }
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
                // not listening yet, or slow to answer
            }

            await Task.Delay(500);
        }

        return last;
    }

    /// <summary>The health Prometheus gives its target (<c>up</c>, <c>down</c>), with the last scrape's error.</summary>
    public async Task<string> TargetHealthAsync()
    {
        var json = await _http.GetStringAsync($"http://127.0.0.1:{Port}/api/v1/targets");
        using var document = JsonDocument.Parse(json);
        var target = document.RootElement.GetProperty("data").GetProperty("activeTargets")[0];
        return $"{target.GetProperty("health").GetString()} {target.GetProperty("lastError").GetString()}";
    }

    public void Dispose()
    {
        try
        {
            _process.Kill();
            _process.WaitForExit();
        }
        catch (InvalidOperationException)
        {
            // it had ended
        }

        _process.Dispose();
        _http.Dispose();
        Directory.Delete(_directory, recursive: true);
    }
}
