using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// 20.3: the data directory on a small file system (a loop-mounted ext4 image made by the test) fills during an
/// upload and during a build: the clients get clear errors, the server stays up, the store verifies clean, and work
/// resumes once space is freed.
/// </summary>
public class DiskFullTests(ITestOutputHelper output)
{
    private const string Socket = NixClient.SocketUri;

    [Fact]
    public void A_full_disk_fails_the_upload_and_the_build_clearly_and_work_resumes_when_space_is_freed()
    {
        var client = NixClient.For("2.8.0");
        using var temp = new TempDir();
        var image = temp["disk.img"];
        var mount = temp["mnt"];
        Directory.CreateDirectory(mount);
        using (var file = File.Create(image))
        {
            file.SetLength(96L << 20);
        }

        Assert.Equal(0, Processes.Run("mkfs.ext4", ["-q", "-F", "-m", "0", image]).ExitCode);
        var mounted = Processes.Run("mount", ["-o", "loop", image, mount]);
        Assert.SkipWhen(mounted.ExitCode != 0, $"no loop mount here: {mounted.Stderr}");
        try
        {
            File.SetUnixFileMode(mount, (UnixFileMode)Convert.ToInt32("755", 8));
            // Space held back, freed later to show work resumes.
            var filler = Path.Combine(mount, "filler");
            File.WriteAllBytes(filler, new byte[24 << 20]);
            var data = Path.Combine(mount, "data");
            var workspace = client.NewWorkspace();
            var big = $"{workspace}/big";
            File.WriteAllBytes(client.HostPath(big), System.Security.Cryptography.RandomNumberGenerator.GetBytes(100 << 20));
            var medium = $"{workspace}/medium";
            File.WriteAllBytes(client.HostPath(medium), System.Security.Cryptography.RandomNumberGenerator.GetBytes(12 << 20));

            using (var kiln = new KilnProcess(dataDirectory: data))
            {
                using var log = new LogOnExit(kiln, output);
                // An upload larger than the space left.
                var upload = client.Run(kiln, "nix-store", "--store", Socket, "--add", big);
                output.WriteLine($"upload: {upload.ExitCode}\n{upload.Stderr}");
                Assert.NotEqual(0, upload.ExitCode);
                Assert.Contains("Kiln's storage is full (no space left on device)", upload.Stderr, StringComparison.Ordinal);
                Assert.DoesNotContain(mount, upload.Stderr, StringComparison.Ordinal); // no server path reaches the client

                // A build whose output is larger than the space left.
                var build = client.Run(kiln, "nix-build", "--store", Socket,
                    Dag.WriteSingle(client, workspace, "huge", "head -c 100000000 /dev/urandom > $out"), "--no-out-link");
                output.WriteLine($"build: {build.ExitCode}\n{build.Stderr}");
                Assert.NotEqual(0, build.ExitCode);
                // The builder's own write fails (its output is on that disk: busybox says "I/O error" or "No space left
                // on device") and the build fails for it, or Kiln's write fails first and says so.
                Assert.True(build.Stderr.Contains("no space left on device", StringComparison.OrdinalIgnoreCase) ||
                            (build.Stderr.Contains("I/O error", StringComparison.Ordinal) && build.Stderr.Contains("failed with exit code 1", StringComparison.Ordinal)), build.Stderr);
                Assert.DoesNotContain(mount, build.Stderr, StringComparison.Ordinal);

                // The server is up; what failed left nothing behind but the space it had: a small upload still fits.
                var small = client.Ok(kiln, "nix-store", "--store", Socket, "--add", medium);
                Assert.StartsWith("/nix/store/", small.StdoutText, StringComparison.Ordinal);

                // Freed space: a build that did not fit before (its output, its blob and the socket account's unpacked
                // copy: 30 MB) now does.
                File.Delete(filler);
                var again = client.Ok(kiln, "nix-build", "--store", Socket,
                    Dag.WriteSingle(client, workspace, "fits", "head -c 10000000 /dev/urandom > $out"), "--no-out-link");
                Assert.StartsWith("/nix/store/", again.StdoutText, StringComparison.Ordinal);
                Assert.DoesNotContain("Unhandled exception", kiln.Log, StringComparison.Ordinal);
                Assert.Equal(0, kiln.Stop());
            }

            var verify = Processes.Run("dotnet", [Path.Combine(AppContext.BaseDirectory, "kiln.dll"), "store", "verify", "--data", data]);
            Assert.True(verify.ExitCode == 0, $"kiln store verify: {verify.StdoutText}{verify.Stderr}");
            Assert.Contains(" 0 problems", verify.StdoutText, StringComparison.Ordinal);
        }
        finally
        {
            if (Processes.Run("umount", [mount]).ExitCode != 0)
            {
                Processes.Run("umount", ["-l", mount]);
            }
        }
    }

    // Writes the server's log to the test's output however the test ends (the log says what Kiln made of a full disk).
    private sealed class LogOnExit(KilnProcess kiln, ITestOutputHelper output) : IDisposable
    {
        public void Dispose() => output.WriteLine(kiln.Log);
    }
}
