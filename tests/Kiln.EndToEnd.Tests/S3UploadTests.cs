using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Metadata;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// A 1 GiB NAR pushed with stock Nix over <c>ssh-ng://</c> into a server whose blobs are in a real S3 server (s3rver):
/// killed with SIGKILL in the middle of the NAR (while it spools, and again while it goes up to the bucket), the server
/// has registered nothing, and <c>kiln store gc</c> leaves neither a spool file nor an object in the bucket; pushed
/// whole, it is valid, its object is in the bucket, and the server's peak memory stays far below the NAR's size.
/// </summary>
public sealed class S3UploadTests(S3Server s3)
{
    private const long Size = 1L << 30;

    [Theory]
    [InlineData("spooling")]
    [InlineData("uploading")]
    public async Task A_large_nar_through_s3_keeps_memory_flat_and_an_interrupted_one_leaves_nothing(string killWhile)
    {
        s3.Require();
        var client = NixClient.For("2.34.8");
        var bucket = s3.NewLocation();
        using var workspace = client.NewWorkspace();
        string directory;
        SshTests.Login alice;
        using (var kiln = new KilnProcess(ssh: true, arguments: ["--blobs", bucket]))
        {
            directory = kiln.DataDirectory;
            alice = SshTests.NewLogin(client, kiln, "alice");
            var file = client.HostPath($"{workspace}/big");
            await using (var output = File.Create(file))
            {
                var chunk = new byte[1 << 20];
                for (long written = 0; written < Size; written += chunk.Length)
                {
                    System.Security.Cryptography.RandomNumberGenerator.Fill(chunk);
                    await output.WriteAsync(chunk);
                }
            }

            var source = $"local?root={workspace}/source";
            var big = client.Ok(kiln, "nix-store", "--store", source, "--add", $"{workspace}/big").StdoutText.Trim();
            File.Delete(file);

            var spool = Path.Combine(directory, "blob-cache", "tmp");
            using var copy = client.Start(kiln, [.. alice.Environment, "nix", "copy", "--store", source, "--to", "ssh-ng://kiln@127.0.0.1", big]);
            var started = DateTime.UtcNow;
            long Spooled() => Directory.EnumerateFiles(spool).Sum(f => new FileInfo(f).Length);
            while (!copy.HasExited && (killWhile == "spooling" ? Spooled() < Size / 2 : Spooled() < Size))
            {
                Assert.True(DateTime.UtcNow - started < TimeSpan.FromMinutes(3), "the NAR never got that far");
                await Task.Delay(20);
            }

            if (copy.HasExited)
            {
                Assert.Fail("the copy ended before the server was killed: " + await copy.StandardError.ReadToEndAsync());
            }

            var before = Spooled();
            kiln.Kill();
            var copyErrors = await copy.StandardError.ReadToEndAsync();
            await copy.WaitForExitAsync();
            Assert.True(copy.ExitCode != 0, $"the copy succeeded although the server was killed (spooled {before}): {copyErrors}\n{kiln.Log}");

            await using (var metadata = MetadataStores.Open(MetadataStores.ForDataDirectory(directory), readOnly: true))
            {
                var account = (await metadata.FindAccountAsync("alice", CancellationToken.None))!;
                Assert.Empty(await metadata.GetAllPathsAsync(account.Id, CancellationToken.None));
            }

            kiln.Cli("store", "gc");
            Assert.Empty(Directory.EnumerateFiles(spool));
            Assert.DoesNotContain(s3.ObjectFiles(bucket), f => f.Contains("/blobs/", StringComparison.Ordinal));

            // Whole this time, into a server started again on the same data directory.
            using var again = new KilnProcess(ssh: true, dataDirectory: directory);
            var throughAgain = SshTests.SshEnvironment(client, again, alice.KeyFile);
            client.Ok(again, [.. throughAgain, "nix", "copy", "--store", source, "--to", "ssh-ng://kiln@127.0.0.1", big]);
            client.Ok(again, [.. throughAgain, "nix", "path-info", "--store", "ssh-ng://kiln@127.0.0.1", big]);
            Assert.Single(s3.ObjectFiles(bucket), f => f.Contains("/blobs/", StringComparison.Ordinal) && new FileInfo(f).Length > Size);
            var peakMiB = again.PeakMemoryKib() / 1024;
            Assert.True(peakMiB < 512, $"kiln serve peaked at {peakMiB} MiB while a {Size >> 20} MiB NAR went through it");
        }
    }
}
