using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Kiln.Nix.Tests.Support;

/// <summary>
/// An S3-speaking server for one test run: <c>s3rver</c> (npm) on 127.0.0.1 on a free port, its objects in a
/// temporary directory, killed and removed on dispose. It speaks the S3 API (objects, listing, multipart uploads) but
/// does not check credentials: any key is accepted, so these tests prove Kiln's S3 traffic, not its authentication.
/// Use it as an assembly fixture; each test takes a bucket of its own from <see cref="CreateBucket"/>.
/// </summary>
public sealed class S3Server : IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), $"kiln-test-s3-{Guid.NewGuid():N}");
    private readonly Process? _process;
    private readonly string? _unavailable;

    /// <summary>The credentials s3rver expects by default (it accepts any).</summary>
    public const string AccessKey = "S3RVER", SecretKey = "S3RVER";

    public int Port { get; }

    public string Endpoint => $"http://127.0.0.1:{Port}";

    /// <summary>Where s3rver keeps buckets and objects (a bucket is a directory under it).</summary>
    public string Directory => _directory;

    public S3Server()
    {
        var program = new[] { "/usr/bin/s3rver", "/usr/local/bin/s3rver" }.FirstOrDefault(File.Exists);
        if (program is null)
        {
            _unavailable = "s3rver is not installed (npm install -g s3rver)";
            return;
        }

        System.IO.Directory.CreateDirectory(_directory);
        File.WriteAllText(CredentialsFile, $"[default]\naws_access_key_id = {AccessKey}\naws_secret_access_key = {SecretKey}\n");
        Port = TestPorts.Free();
        var info = new ProcessStartInfo(program) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { "-d", _directory, "-a", "127.0.0.1", "-p", Port.ToString(CultureInfo.InvariantCulture), "--silent", "--no-vhost-buckets" })
        {
            info.ArgumentList.Add(arg);
        }

        _process = Process.Start(info)!;
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!Listening(Port))
        {
            if (_process.HasExited || DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException("s3rver did not start");
            }

            Thread.Sleep(50);
        }
    }

    /// <summary>Skips the test (or fails it under KILN_REQUIRE_S3=1, as CI runs) when there is no s3rver here.</summary>
    public void Require()
    {
        if (_unavailable is null)
        {
            return;
        }

        if (Environment.GetEnvironmentVariable("KILN_REQUIRE_S3") == "1")
        {
            throw new InvalidOperationException(_unavailable);
        }

        Assert.Skip(_unavailable);
    }

    /// <summary>Creates an empty bucket (a PUT of the bucket) and returns its name.</summary>
    public string CreateBucket()
    {
        Require();
        var name = $"b{Guid.NewGuid():N}"[..24];
        using var http = new HttpClient();
        using var response = http.Send(new HttpRequestMessage(HttpMethod.Put, $"{Endpoint}/{name}"));
        response.EnsureSuccessStatusCode();
        return name;
    }

    /// <summary>
    /// The <c>--blobs</c> location of a new bucket, with a prefix, its credentials in a shared credentials file (as an
    /// operator would give them to a service; nothing in this process's environment).
    /// </summary>
    public string NewLocation(string prefix = "kiln") =>
        $"s3://{CreateBucket()}/{prefix}?endpoint={Uri.EscapeDataString(Endpoint)}&region=us-east-1&credentials_file={Uri.EscapeDataString(CredentialsFile)}";

    /// <summary>An AWS shared credentials file with s3rver's keys as the default profile.</summary>
    public string CredentialsFile => _directory + ".credentials";

    /// <summary>The files holding a bucket's objects (s3rver keeps each as <c>KEY._S3rver_object</c>, with metadata files beside it).</summary>
    public IReadOnlyList<string> ObjectFiles(string location)
    {
        var bucket = new Uri(location).Host;
        var root = Path.Combine(_directory, bucket);
        return System.IO.Directory.Exists(root)
            ? System.IO.Directory.EnumerateFiles(root, "*", SearchOption.AllDirectories).Where(f => f.EndsWith("._S3rver_object", StringComparison.Ordinal)).ToList()
            : [];
    }

    private static bool Listening(int port)
    {
        try
        {
            using var client = new TcpClient();
            client.Connect(IPAddress.Loopback, port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    public void Dispose()
    {
        if (_process is { HasExited: false })
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }

        _process?.Dispose();
        if (System.IO.Directory.Exists(_directory))
        {
            System.IO.Directory.Delete(_directory, recursive: true);
        }

        File.Delete(CredentialsFile);
    }
}
