using System.Collections.Concurrent;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// 20.3: kill -9 at a random moment while uploads (worker protocol and HTTP), builds and deletions run at once, then
/// `kiln store verify` and every path a client was told was added. The work shares a few contents on purpose, so
/// deletions sweep blobs that uploads and builds of the same content are registering at that moment.
/// </summary>
public class CrashTests(ITestOutputHelper output)
{
    private const string Socket = NixClient.SocketUri;

    // A few contents every kind of work adds, so they share blobs.
    private static readonly string[] Contents = ["alpha\n", "beta\n", "gamma\n", "delta\n"];

    [Fact]
    public async Task Killed_at_a_random_moment_Kiln_loses_nothing_it_acknowledged_and_its_store_verifies()
    {
        var rounds = int.TryParse(Environment.GetEnvironmentVariable("KILN_FAULT_ROUNDS"), CultureInfo.InvariantCulture, out var n) ? n : 5;
        var client = NixClient.For("2.8.0");
        using var temp = new TempDir();
        var data = temp["data"];
        using var workspace = client.NewWorkspace();
        Dag.WriteBusybox(client, workspace);
        var acknowledged = new ConcurrentBag<string>();
        var acknowledgedHttp = new ConcurrentBag<string>();
        string? token = null;
        var random = new Random();
        for (var round = 0; round < rounds; round++)
        {
            using (var kiln = new KilnProcess(http: true, dataDirectory: data, arguments: ["--blob-sweep-interval", "1"]))
            {
                if (token is null)
                {
                    kiln.Cli("account", "create", "alice");
                    token = kiln.Cli("token", "create", "alice", "--permissions", "store:read,store:write").Split('\n')[0];
                }

                // What earlier rounds acknowledged is all there, before this round's work starts.
                AssertAllValid(client, kiln, acknowledged, acknowledgedHttp, token);

                using var stop = new CancellationTokenSource();
                var work = new[]
                {
                    Task.Run(() => Uploads(client, kiln, workspace, round, acknowledged, stop.Token)),
                    Task.Run(() => Deletions(client, kiln, workspace, round, stop.Token)),
                    Task.Run(() => Builds(client, kiln, workspace, round, acknowledged, stop.Token)),
                    Task.Run(() => HttpUploadsAsync(kiln, token, round, acknowledgedHttp, stop.Token)),
                };
                var moment = random.Next(300, 2500);
                await Task.Delay(moment);
                kiln.Kill();
                stop.Cancel();
                await Task.WhenAll(work);
                output.WriteLine($"round {round}: killed after {moment} ms; {acknowledged.Count} worker and {acknowledgedHttp.Count} HTTP paths acknowledged so far");
            }

            var verify = Processes.Run("dotnet", [Path.Combine(AppContext.BaseDirectory, "kiln.dll"), "store", "verify", "--data", data]);
            Assert.True(verify.ExitCode == 0, $"round {round}: kiln store verify failed:\n{verify.StdoutText}{verify.Stderr}");
            Assert.Contains(" 0 problems", verify.StdoutText, StringComparison.Ordinal);
        }

        using (var kiln = new KilnProcess(http: true, dataDirectory: data))
        {
            AssertAllValid(client, kiln, acknowledged, acknowledgedHttp, token!);
        }

        Assert.NotEmpty(acknowledged);
    }

    private static void AssertAllValid(NixClient client, KilnProcess kiln, IEnumerable<string> paths, IEnumerable<string> httpPaths, string token)
    {
        var list = paths.ToList();
        if (list.Count > 0)
        {
            var invalid = client.Ok(kiln, ["nix-store", "--store", Socket, "--check-validity", "--print-invalid", .. list]).StdoutText.Trim();
            Assert.True(invalid.Length == 0, $"acknowledged paths are missing after a crash:\n{invalid}");
        }

        using var http = new HttpClient { BaseAddress = new Uri(kiln.HttpUrl) };
        foreach (var path in httpPaths)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, $"/{StorePath.Parse(path).HashPart}.narinfo");
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
            using var response = http.Send(request);
            Assert.True(response.StatusCode == HttpStatusCode.OK, $"the acknowledged HTTP upload {path} is missing after a crash");
        }
    }

    private static string WriteFile(NixClient client, string workspace, string name, string contents)
    {
        File.WriteAllText(client.HostPath($"{workspace}/{name}"), contents);
        return $"{workspace}/{name}";
    }

    // nix-store --add of files with the shared contents; a path printed is a path acknowledged.
    private static void Uploads(NixClient client, KilnProcess kiln, string workspace, int round, ConcurrentBag<string> acknowledged, CancellationToken stop)
    {
        for (var i = 0; !stop.IsCancellationRequested; i++)
        {
            var file = WriteFile(client, workspace, $"up-{round}-{i}", Contents[i % Contents.Length]);
            var added = client.Run(kiln, "nix-store", "--store", Socket, "--add", file);
            if (added.ExitCode == 0)
            {
                acknowledged.Add(added.StdoutText.Trim());
            }
        }
    }

    // Adds a path with a shared content and deletes it again: the blob goes with it unless something else names it.
    private static void Deletions(NixClient client, KilnProcess kiln, string workspace, int round, CancellationToken stop)
    {
        for (var i = 0; !stop.IsCancellationRequested; i++)
        {
            var victim = client.Run(kiln, "nix-store", "--store", Socket, "--add", WriteFile(client, workspace, $"victim-{round}-{i}", Contents[(i + 1) % Contents.Length]));
            if (victim.ExitCode == 0)
            {
                client.Run(kiln, "nix-store", "--store", Socket, "--delete", victim.StdoutText.Trim());
            }
        }
    }

    // Builds whose output is a file with a shared content (the same NAR as an upload of it).
    private static void Builds(NixClient client, KilnProcess kiln, string workspace, int round, ConcurrentBag<string> acknowledged, CancellationToken stop)
    {
        for (var i = 0; !stop.IsCancellationRequested; i++)
        {
            var text = Contents[(i + 2) % Contents.Length].TrimEnd('\n');
            var file = Dag.WriteSingle(client, workspace, $"crash-{round}-{i}", $"echo {round}-{i}; echo {text} > $out");
            var built = client.Run(kiln, "nix-build", "--store", Socket, file, "--no-out-link");
            if (built.ExitCode == 0)
            {
                acknowledged.Add(built.StdoutText.Trim());
            }
        }
    }

    // alice PUTs NARs with the shared contents and their narinfos; a 200 for the narinfo acknowledges the path.
    private static async Task HttpUploadsAsync(KilnProcess kiln, string token, int round, ConcurrentBag<string> acknowledged, CancellationToken stop)
    {
        using var http = new HttpClient { BaseAddress = new Uri(kiln.HttpUrl), Timeout = TimeSpan.FromSeconds(30) };
        for (var i = 0; !stop.IsCancellationRequested; i++)
        {
            var nar = NarBuilder.Start().File(Contents[(i + 3) % Contents.Length]).ToArray();
            var narHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar);
            var path = StorePath.FromHash(System.Security.Cryptography.RandomNumberGenerator.GetBytes(20), $"http-{round}-{i}");
            var narInfo = $"StorePath: {path}\nURL: nar/{narHash.ToNix32()}.nar\nCompression: none\nNarHash: {narHash}\nNarSize: {nar.Length}\nReferences: \n";
            try
            {
                if (await PutAsync(http, $"/nar/{narHash.ToNix32()}.nar", token, nar) && await PutAsync(http, $"/{path.HashPart}.narinfo", token, Encoding.UTF8.GetBytes(narInfo)))
                {
                    acknowledged.Add(path.ToString());
                }
            }
            catch (HttpRequestException)
            {
                // The server is gone (killed): nothing was acknowledged.
            }
            catch (System.Net.Sockets.SocketException)
            {
                // Killed between the connection's accept and its first use: HttpClient lets the socket's own error out.
            }
            catch (TaskCanceledException)
            {
            }
        }
    }

    private static async Task<bool> PutAsync(HttpClient http, string path, string token, byte[] body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Put, path) { Content = new ByteArrayContent(body) };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        using var response = await http.SendAsync(request);
        return response.StatusCode == HttpStatusCode.OK;
    }
}
