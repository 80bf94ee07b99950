using System.Diagnostics;
using System.Globalization;

namespace Kiln.Nix.Tests.Support;

/// <summary>
/// Ceph's radosgw for one test run: a throwaway single-node cluster (one monitor, one memstore OSD) and its S3 gateway
/// on 127.0.0.1 on a free port, started by <c>tests/radosgw/start.sh</c> in a temporary directory (about 2 s) and
/// killed and removed on dispose. Unlike s3rver it checks what a real S3 service checks: request signatures, the
/// credentials, presigned URLs' signatures and expiry; and it lists and aborts multipart uploads. It needs root and
/// Debian's radosgw, ceph-mon, ceph-osd and ceph-common. Use it as an assembly fixture; each test takes a bucket of
/// its own. Objects live in the OSD's memory: keep them small.
/// </summary>
public sealed class RadosGateway : IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), $"kiln-test-rgw-{Guid.NewGuid():N}");
    private readonly string? _unavailable;
    private readonly bool _started;

    /// <summary>The user the script makes (any key works for s3rver; these are the only ones radosgw takes).</summary>
    public const string AccessKey = "KILNTESTACCESSKEY001", SecretKey = "kiln-test-secret-0123456789abcdefghijklmn";

    public int Port { get; }

    public string Endpoint => $"http://127.0.0.1:{Port}";

    public RadosGateway()
    {
        if (new[] { "/usr/bin/radosgw", "/usr/bin/ceph-mon", "/usr/bin/ceph-osd", "/usr/bin/monmaptool" }.FirstOrDefault(p => !File.Exists(p)) is { } missing)
        {
            _unavailable = $"{missing} is not installed (apt-get install --no-install-recommends radosgw ceph-mon ceph-osd ceph-common)";
            return;
        }

        if (!Environment.IsPrivilegedProcess)
        {
            _unavailable = "radosgw's test cluster is started as root";
            return;
        }

        Port = TestPorts.Free();
        var (status, output) = Run("start.sh", _directory, Port.ToString(CultureInfo.InvariantCulture));
        _started = true;
        if (status != 0)
        {
            Stop();
            throw new InvalidOperationException("radosgw did not start: " + output);
        }

        File.WriteAllText(CredentialsFile, $"[default]\naws_access_key_id = {AccessKey}\naws_secret_access_key = {SecretKey}\n");
    }

    /// <summary>Skips the test (or fails it under KILN_REQUIRE_RGW=1, as CI runs) when radosgw cannot run here.</summary>
    public void Require()
    {
        if (_unavailable is null)
        {
            return;
        }

        if (Environment.GetEnvironmentVariable("KILN_REQUIRE_RGW") == "1")
        {
            throw new InvalidOperationException(_unavailable);
        }

        Assert.Skip(_unavailable);
    }

    /// <summary>An AWS shared credentials file with the gateway's user as the default profile.</summary>
    public string CredentialsFile => _directory + ".credentials";

    /// <summary>Creates an empty bucket (a signed PUT of the bucket, with curl) and returns its name.</summary>
    public string CreateBucket()
    {
        Require();
        var name = $"b{Guid.NewGuid():N}"[..24];
        var info = new ProcessStartInfo("curl") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        // (curl 7.88 signs no payload hash of its own: radosgw wants the header.)
        foreach (var arg in new[] { "-sS", "-f", "-X", "PUT", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", $"{AccessKey}:{SecretKey}",
                     "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", $"{Endpoint}/{name}" })
        {
            info.ArgumentList.Add(arg);
        }

        using var curl = Process.Start(info)!;
        var error = curl.StandardError.ReadToEnd();
        curl.StandardOutput.ReadToEnd();
        curl.WaitForExit();
        if (curl.ExitCode != 0)
        {
            throw new InvalidOperationException($"radosgw refused to create a bucket: {error}");
        }

        return name;
    }

    /// <summary>The <c>--blobs</c> location of a new bucket, with a prefix, read with <paramref name="credentialsFile"/> (the gateway's user's by default).</summary>
    public string NewLocation(string prefix = "kiln", string? credentialsFile = null) =>
        $"s3://{CreateBucket()}/{prefix}?endpoint={Uri.EscapeDataString(Endpoint)}&region=us-east-1&credentials_file={Uri.EscapeDataString(credentialsFile ?? CredentialsFile)}";

    /// <summary>The requests radosgw has served so far (its own counter, read over its admin socket).</summary>
    public long Requests()
    {
        var info = new ProcessStartInfo("ceph", ["--admin-daemon", Path.Combine(_directory, "run", "client.rgw.asok"), "perf", "dump"])
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
        };
        using var process = Process.Start(info)!;
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        using var json = System.Text.Json.JsonDocument.Parse(output);
        return json.RootElement.GetProperty("rgw").GetProperty("req").GetInt64();
    }

    private static (int Status, string Output) Run(string script, params string[] args)
    {
        var info = new ProcessStartInfo(Path.Combine(Repo.Root, "tests", "radosgw", script))
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            Environment = { ["RGW_ACCESS_KEY"] = AccessKey, ["RGW_SECRET_KEY"] = SecretKey },
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var error = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            process.Kill(entireProcessTree: true);
        }

        return (process.HasExited ? process.ExitCode : -1, output + error.Result);
    }

    private void Stop() => Run("stop.sh", _directory);

    public void Dispose()
    {
        if (_started)
        {
            Stop();
        }

        File.Delete(CredentialsFile);
    }
}
