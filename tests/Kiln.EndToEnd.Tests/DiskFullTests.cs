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
        using var disk = LoopDisk.Make(96);
        // Space held back, freed later to show work resumes.
        var filler = Path.Combine(disk.Mount, "filler");
        File.WriteAllBytes(filler, new byte[24 << 20]);
        var data = Path.Combine(disk.Mount, "data");
        using var workspace = client.NewWorkspace();
        var big = $"{workspace}/big";
        File.WriteAllBytes(client.HostPath(big), System.Security.Cryptography.RandomNumberGenerator.GetBytes(100 << 20));
        var medium = $"{workspace}/medium";
        File.WriteAllBytes(client.HostPath(medium), System.Security.Cryptography.RandomNumberGenerator.GetBytes(12 << 20));

        // Without the disk guard, so the disk really fills (the guard is the next test's).
        using (var kiln = new KilnProcess(dataDirectory: data, arguments: ["--build-disk", "0", "--min-free-disk", "0"]))
        {
            using var log = new LogOnExit(kiln, output);
            // An upload larger than the space left.
            var upload = client.Run(kiln, "nix-store", "--store", Socket, "--add", big);
            output.WriteLine($"upload: {upload.ExitCode}\n{upload.Stderr}");
            Assert.NotEqual(0, upload.ExitCode);
            Assert.Contains("Kiln's storage is full (no space left on device)", upload.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain(disk.Mount, upload.Stderr, StringComparison.Ordinal); // no server path reaches the client

            // A build whose output is larger than the space left.
            var build = client.Run(kiln, "nix-build", "--store", Socket,
                Dag.WriteSingle(client, workspace, "huge", "head -c 100000000 /dev/urandom > $out"), "--no-out-link");
            output.WriteLine($"build: {build.ExitCode}\n{build.Stderr}");
            Assert.NotEqual(0, build.ExitCode);
            // The builder's own write fails (its output is on that disk: busybox says "I/O error" or "No space left
            // on device") and the build fails for it, or Kiln's write fails first and says so.
            Assert.True(build.Stderr.Contains("no space left on device", StringComparison.OrdinalIgnoreCase) ||
                        (build.Stderr.Contains("I/O error", StringComparison.Ordinal) && build.Stderr.Contains("failed with exit code 1", StringComparison.Ordinal)), build.Stderr);
            Assert.DoesNotContain(disk.Mount, build.Stderr, StringComparison.Ordinal);

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

        Verify(data);
    }

    /// <summary>
    /// 20.1, disk: a build's outputs are on the store's disk, so Kiln measures what each build writes. One over its own
    /// limit (10 GB into $out) is stopped at it; one that takes the disk under the free space Kiln keeps is stopped
    /// before the disk fills; both say why, and the next build and the store are fine.
    /// </summary>
    [Fact]
    public void A_build_over_its_disk_limit_or_into_the_kept_free_space_is_stopped_and_says_why()
    {
        var client = NixClient.For("2.8.0");
        using var disk = LoopDisk.Make(160);
        var data = Path.Combine(disk.Mount, "data");
        using var workspace = client.NewWorkspace();
        using (var kiln = new KilnProcess(dataDirectory: data, arguments: ["--build-disk", "32MiB", "--min-free-disk", "64MiB"]))
        {
            using var log = new LogOnExit(kiln, output);
            var writer = client.Run(kiln, "nix-build", "--store", Socket,
                Dag.WriteSingle(client, workspace, "writer", "head -c 10000000000 /dev/zero > $out"), "--no-out-link");
            output.WriteLine($"writer: {writer.ExitCode}\n{writer.Stderr}");
            Assert.NotEqual(0, writer.ExitCode);
            Assert.Contains("MiB to disk, more than its limit of 32 MiB", writer.Stderr, StringComparison.Ordinal);

            // A stopped build's directory is removed in the background: the next one starts on the disk's free space.
            void WaitForStoppedBuildsGone()
            {
                var waited = System.Diagnostics.Stopwatch.StartNew();
                while (Directory.EnumerateDirectories(Path.Combine(data, "builds")).Any() && waited.Elapsed < TimeSpan.FromSeconds(30))
                {
                    Thread.Sleep(100);
                }
            }

            WaitForStoppedBuildsGone();

            // The same for writes in more files than kiln serve counts itself while a build runs (1,024 entries; the
            // limit is crossed at 2,048 of these): du counts them. The build goes on waiting after its writes, so only
            // a count while it runs can stop it in time.
            var manyTook = System.Diagnostics.Stopwatch.StartNew();
            var many = client.Run(kiln, "nix-build", "--store", Socket, Dag.WriteSingle(client, workspace, "many",
                "mkdir $out; i=0; while [ $i -lt 3000 ]; do head -c 16384 /dev/zero > $out/$i; i=$((i + 1)); done; sleep 60"), "--no-out-link");
            output.WriteLine($"many: {many.ExitCode} after {manyTook.Elapsed}\n{many.Stderr}");
            Assert.NotEqual(0, many.ExitCode);
            Assert.Contains("MiB to disk, more than its limit of 32 MiB", many.Stderr, StringComparison.Ordinal);
            Assert.True(manyTook.Elapsed < TimeSpan.FromSeconds(45), $"stopped after {manyTook.Elapsed}: not while it ran (the count after its exit says the same)");

            // 20 MiB, under its own limit, which takes the disk's free space under 64 MiB; then it waits to be stopped.
            WaitForStoppedBuildsGone();
            File.WriteAllBytes(Path.Combine(disk.Mount, "filler"), new byte[(int)Math.Max(0, (disk.FreeBytes() - (80L << 20)))]);
            var slow = client.Run(kiln, "nix-build", "--store", Socket,
                Dag.WriteSingle(client, workspace, "slow", "head -c 20971520 /dev/urandom > $out; sleep 60"), "--no-out-link");
            output.WriteLine($"slow: {slow.ExitCode}\n{slow.Stderr}");
            Assert.NotEqual(0, slow.ExitCode);
            Assert.Contains("was stopped because Kiln's disk is nearly full and this build had written the most to it", slow.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain(disk.Mount, slow.Stderr + writer.Stderr, StringComparison.Ordinal);

            // What they wrote is gone with them: a small build fits.
            var small = client.Ok(kiln, "nix-build", "--store", Socket, Dag.WriteSingle(client, workspace, "small", "head -c 1000000 /dev/urandom > $out"), "--no-out-link");
            Assert.StartsWith("/nix/store/", small.StdoutText, StringComparison.Ordinal);
            Assert.Equal(0, kiln.Stop());
        }

        Verify(data);
    }

    /// <summary>
    /// What a build leaves that .NET cannot name (bytes that are not UTF-8, paths past PATH_MAX) neither hides from the
    /// disk count nor, left behind by a killed Kiln, stops the next start.
    /// </summary>
    [Fact]
    public void Names_a_build_makes_unreadable_neither_hide_its_writes_nor_stop_a_restart()
    {
        var client = NixClient.For("2.8.0");
        using var temp = new TempDir();
        var data = temp["data"];
        using var workspace = client.NewWorkspace();
        const string Weird = "mkdir $out; cd $out; mkdir \"$(printf '\\377\\376')\"; " +
            "head -c 40000000 /dev/zero > \"$(printf '\\377\\376')/$(printf 'x\\377')\"; " +
            // 5,000 characters deep, made from two chains each short enough for a path argument.
            "long=$(printf 'd%.0s' $(seq 1 250)); p=a; q=b; for i in $(seq 1 10); do p=$p/$long; q=$q/$long; done; mkdir -p $p $q; mv a $q/";
        using (var kiln = new KilnProcess(dataDirectory: data, arguments: ["--build-disk", "32MiB"]))
        {
            using var log = new LogOnExit(kiln, output);
            var hidden = client.Run(kiln, "nix-build", "--store", Socket, Dag.WriteSingle(client, workspace, "hidden", Weird), "--no-out-link");
            output.WriteLine($"hidden: {hidden.ExitCode}\n{hidden.Stderr}");
            Assert.NotEqual(0, hidden.ExitCode);
            Assert.Contains("more than its limit of 32 MiB", hidden.Stderr, StringComparison.Ordinal);

            // The same tree, then a sleep: Kiln is killed while the build directory holds it.
            var sleeper = client.Start(kiln, "nix-build", "--store", Socket, Dag.WriteSingle(client, workspace, "sleeper", Weird.Replace("40000000", "1000", StringComparison.Ordinal) + "; sleep 600"), "--no-out-link");
            var waited = System.Diagnostics.Stopwatch.StartNew();
            while (BuildDirectories(data).Length == 0 && waited.Elapsed < TimeSpan.FromSeconds(60))
            {
                Thread.Sleep(100);
            }

            Thread.Sleep(3000); // the tree is made in well under that
            kiln.Kill();
            sleeper.Kill(entireProcessTree: true);
            sleeper.WaitForExit();
            sleeper.Dispose();
        }

        Assert.NotEmpty(BuildDirectories(data));
        using (var again = new KilnProcess(dataDirectory: data))
        {
            using var log = new LogOnExit(again, output);
            var small = client.Ok(again, "nix-build", "--store", Socket, Dag.WriteSingle(client, workspace, "after", "echo fine > $out"), "--no-out-link");
            Assert.StartsWith("/nix/store/", small.StdoutText, StringComparison.Ordinal);
            Assert.Empty(BuildDirectories(data));
            Assert.Equal(0, again.Stop());
        }
    }

    // The builds' own directories (not what every build shares: .dev, .build-tmpfs, the linked inputs kept between builds).
    private static string[] BuildDirectories(string data) =>
        [.. Directory.GetDirectories(Path.Combine(data, "builds")).Where(d => !Path.GetFileName(d).StartsWith('.'))];

    private static void Verify(string data)
    {
        var verify = Processes.Run("dotnet", [Path.Combine(AppContext.BaseDirectory, "kiln.dll"), "store", "verify", "--data", data]);
        Assert.True(verify.ExitCode == 0, $"kiln store verify: {verify.StdoutText}{verify.Stderr}");
        Assert.Contains(" 0 problems", verify.StdoutText, StringComparison.Ordinal);
    }

    // A small ext4 file system in an image file, loop-mounted for one test (skips where loop mounts are refused).
    private sealed class LoopDisk : IDisposable
    {
        private readonly TempDir _temp = new();

        private LoopDisk() => Mount = _temp["mnt"];

        public string Mount { get; }

        public long FreeBytes() => new DriveInfo(Mount).AvailableFreeSpace;

        public static LoopDisk Make(int mib)
        {
            var disk = new LoopDisk();
            try
            {
                var image = disk._temp["disk.img"];
                Directory.CreateDirectory(disk.Mount);
                using (var file = File.Create(image))
                {
                    file.SetLength((long)mib << 20);
                }

                Assert.Equal(0, Processes.Run("mkfs.ext4", ["-q", "-F", "-m", "0", image]).ExitCode);
                var mounted = Processes.Run("mount", ["-o", "loop", image, disk.Mount]);
                Assert.SkipWhen(mounted.ExitCode != 0, $"no loop mount here: {mounted.Stderr}");
                File.SetUnixFileMode(disk.Mount, (UnixFileMode)Convert.ToInt32("755", 8));
                return disk;
            }
            catch
            {
                disk.Dispose();
                throw;
            }
        }

        public void Dispose()
        {
            if (Processes.Run("mountpoint", ["-q", Mount]).ExitCode == 0 && Processes.Run("umount", [Mount]).ExitCode != 0)
            {
                Processes.Run("umount", ["-l", Mount]);
            }

            _temp.Dispose();
        }
    }

    // Writes the server's log to the test's output however the test ends (the log says what Kiln made of a full disk).
    private sealed class LogOnExit(KilnProcess kiln, ITestOutputHelper output) : IDisposable
    {
        public void Dispose() => output.WriteLine(kiln.Log);
    }
}
