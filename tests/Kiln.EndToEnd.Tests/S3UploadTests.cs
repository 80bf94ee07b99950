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

    /// <summary>A file of <paramref name="size"/> random bytes added to the client store <c>local?root=WORKSPACE/source</c>: that store, and the path.</summary>
    internal static async Task<(string Store, string Path)> AddRandomFileAsync(NixClient client, KilnProcess kiln, string workspace, long size)
    {
        var file = client.HostPath($"{workspace}/big");
        await using (var output = File.Create(file))
        {
            var chunk = new byte[1 << 20];
            for (long written = 0; written < size; written += chunk.Length)
            {
                System.Security.Cryptography.RandomNumberGenerator.Fill(chunk);
                await output.WriteAsync(chunk);
            }
        }

        var source = $"local?root={workspace}/source";
        var path = client.Ok(kiln, "nix-store", "--store", source, "--add", $"{workspace}/big").StdoutText.Trim();
        File.Delete(file);
        return (source, path);
    }

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
            var (source, big) = await AddRandomFileAsync(client, kiln, workspace, Size);

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

/// <summary>
/// The interrupted upload again, on Ceph's radosgw, which (unlike s3rver) lists multipart uploads: a server killed with
/// SIGKILL while a NAR's parts go up to the bucket leaves an unfinished multipart upload there (its parts cost storage
/// and nothing else would remove them), nothing registered; <c>kiln store gc</c> aborts it and leaves no object; the NAR
/// pushed again whole is valid. radosgw is started for this class alone (it keeps objects in memory).
/// </summary>
public sealed class RadosUploadTests(RadosGateway rgw, PostgresServer postgres) : IClassFixture<RadosGateway>
{
    private const long NarSize = 384L << 20; // 24 parts of 16 MiB: seconds of uploading to catch it in

    // The multipart uploads begun and not finished under a front door's prefix, and the blobs stored under it.
    private static async Task<List<Amazon.S3.Model.MultipartUpload>> UnfinishedUploadsAsync(Amazon.S3.IAmazonS3 s3, string bucket, string prefix) =>
        (await s3.ListMultipartUploadsAsync(new Amazon.S3.Model.ListMultipartUploadsRequest { BucketName = bucket, Prefix = prefix })).MultipartUploads ?? [];

    private static async Task<List<Amazon.S3.Model.S3Object>> BlobObjectsAsync(Amazon.S3.IAmazonS3 s3, string bucket, string prefix) =>
        (await s3.ListObjectsV2Async(new Amazon.S3.Model.ListObjectsV2Request { BucketName = bucket, Prefix = prefix + "blobs/" })).S3Objects ?? [];

    [Fact]
    public async Task A_server_killed_mid_multipart_upload_leaves_an_upload_that_gc_aborts_and_nothing_registered()
    {
        rgw.Require();
        var client = NixClient.For("2.34.8");
        var blobs = rgw.NewLocation();
        var location = Kiln.Store.Blobs.S3BlobLocation.Parse(blobs);
        using var s3 = location.CreateClient();
        Task<List<Amazon.S3.Model.MultipartUpload>> UploadsAsync() => UnfinishedUploadsAsync(s3, location.Bucket, location.Prefix);
        Task<List<Amazon.S3.Model.S3Object>> ObjectsAsync() => BlobObjectsAsync(s3, location.Bucket, location.Prefix);

        using var workspace = client.NewWorkspace();
        using var kiln = new KilnProcess(ssh: true, arguments: ["--blobs", blobs]);
        var directory = kiln.DataDirectory;
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var (source, big) = await S3UploadTests.AddRandomFileAsync(client, kiln, workspace, NarSize);

        // Killed once the bucket has the upload and at least one of its parts, while the copy is still going.
        using var copy = client.Start(kiln, [.. alice.Environment, "nix", "copy", "--store", source, "--to", "ssh-ng://kiln@127.0.0.1", big]);
        var started = DateTime.UtcNow;
        while (!copy.HasExited)
        {
            Assert.True(DateTime.UtcNow - started < TimeSpan.FromMinutes(3), "no multipart upload began");
            if (await UploadsAsync() is [var upload])
            {
                try
                {
                    var parts = await s3.ListPartsAsync(new Amazon.S3.Model.ListPartsRequest { BucketName = location.Bucket, Key = upload.Key, UploadId = upload.UploadId });
                    if (parts.Parts is { Count: > 0 })
                    {
                        break;
                    }
                }
                catch (Amazon.S3.AmazonS3Exception e) when (e.StatusCode == System.Net.HttpStatusCode.NotFound)
                {
                    // completed in between: the loop sees the copy end
                }
            }

            await Task.Delay(20);
        }

        Assert.False(copy.HasExited, "the copy ended before the server was killed: " + (copy.HasExited ? await copy.StandardError.ReadToEndAsync() : ""));
        kiln.Kill();
        var copyErrors = await copy.StandardError.ReadToEndAsync();
        await copy.WaitForExitAsync();
        Assert.True(copy.ExitCode != 0, $"the copy succeeded although the server was killed: {copyErrors}\n{kiln.Log}");

        await using (var metadata = MetadataStores.Open(MetadataStores.ForDataDirectory(directory), readOnly: true))
        {
            var account = (await metadata.FindAccountAsync("alice", CancellationToken.None))!;
            Assert.Empty(await metadata.GetAllPathsAsync(account.Id, CancellationToken.None));
        }

        var left = Assert.Single(await UploadsAsync()); // what the killed server could not abort
        Assert.EndsWith(".nar", left.Key, StringComparison.Ordinal);
        Assert.Empty(await ObjectsAsync());

        kiln.Cli("store", "gc");
        Assert.Empty(await UploadsAsync());
        Assert.Empty(await ObjectsAsync());
        Assert.Empty(Directory.EnumerateFiles(Path.Combine(directory, "blob-cache", "tmp")));

        // Whole this time, into a server started again on the same data directory: one object, the NAR's size or more.
        using var again = new KilnProcess(ssh: true, dataDirectory: directory);
        var throughAgain = SshTests.SshEnvironment(client, again, alice.KeyFile);
        client.Ok(again, [.. throughAgain, "nix", "copy", "--store", source, "--to", "ssh-ng://kiln@127.0.0.1", big]);
        client.Ok(again, [.. throughAgain, "nix", "path-info", "--store", "ssh-ng://kiln@127.0.0.1", big]);
        Assert.True((await ObjectsAsync()) is [{ Size: > NarSize }], string.Join(", ", (await ObjectsAsync()).Select(o => $"{o.Key} {o.Size}")));
        Assert.Empty(await UploadsAsync());
    }

    // kiln store gc with its own front door stopped, on a database other front doors share: one of them may be running
    // and uploading. A multipart upload under way and a blob stored but not yet named, in the bucket the front doors
    // share (made here by hand, as B's would be mid-push), are young: they stay. (On a store of its own, the test
    // above: gc aborts at once what the killed server left.)
    [Fact]
    public async Task Offline_gc_on_a_shared_database_spares_another_front_doors_uploads_in_flight()
    {
        rgw.Require();
        postgres.Require();
        var database = postgres.CreateDatabase();
        var blobs = rgw.NewLocation();
        var location = Kiln.Store.Blobs.S3BlobLocation.Parse(blobs);
        using var s3 = location.CreateClient();
        using var a = new KilnProcess(arguments: ["--database", database, "--blobs", blobs]);
        using var b = new KilnProcess(arguments: ["--database", database, "--blobs", blobs]);
        Assert.Equal(0, a.Stop());

        string Key(string content) => location.Prefix + "blobs/" + Kiln.Nix.Hashing.NixHash.Compute(Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, content).ToNix32() + ".nar";
        var inFlight = Key("a NAR on its way up");
        var upload = await s3.InitiateMultipartUploadAsync(new Amazon.S3.Model.InitiateMultipartUploadRequest { BucketName = location.Bucket, Key = inFlight });
        await s3.UploadPartAsync(new Amazon.S3.Model.UploadPartRequest
        {
            BucketName = location.Bucket,
            Key = inFlight,
            UploadId = upload.UploadId,
            PartNumber = 1,
            InputStream = new MemoryStream(new byte[5 << 20]),
        });
        var stored = Key("stored, not yet named");
        await s3.PutObjectAsync(new Amazon.S3.Model.PutObjectRequest { BucketName = location.Bucket, Key = stored, ContentBody = "stored, not yet named" });

        a.Cli("store", "gc");
        Assert.Equal([inFlight], (await UnfinishedUploadsAsync(s3, location.Bucket, location.Prefix)).Select(u => u.Key));
        Assert.Equal([stored], (await BlobObjectsAsync(s3, location.Bucket, location.Prefix)).Select(o => o.Key));
        await s3.AbortMultipartUploadAsync(location.Bucket, inFlight, upload.UploadId);
    }

    // Secrets from the environment, as an operator's service manager gives them: the database password from
    // KILN_DATABASE_PASSWORD (the connection string has none) and the S3 keys from AWS_ACCESS_KEY_ID and
    // AWS_SECRET_ACCESS_KEY (the location names no credentials file; radosgw checks every request's signature). A
    // closure pushed through the socket is then valid and in the bucket, and neither secret is in the server's log.
    [Fact]
    public async Task A_front_door_takes_its_database_password_and_s3_keys_from_the_environment()
    {
        rgw.Require();
        postgres.Require();
        var client = NixClient.For("2.34.8");
        var connection = new Npgsql.NpgsqlConnectionStringBuilder(postgres.CreateDatabase());
        var password = connection.Password!;
        connection.Password = null;
        var bucket = rgw.CreateBucket();
        var blobs = $"s3://{bucket}/kiln?endpoint={Uri.EscapeDataString(rgw.Endpoint)}&region=us-east-1";
        var environment = new Dictionary<string, string>
        {
            ["KILN_DATABASE_PASSWORD"] = password,
            ["AWS_ACCESS_KEY_ID"] = RadosGateway.AccessKey,
            ["AWS_SECRET_ACCESS_KEY"] = RadosGateway.SecretKey,
        };
        using var workspace = client.NewWorkspace();
        using var kiln = new KilnProcess(arguments: ["--database", connection.ConnectionString, "--blobs", blobs], environment: environment);
        var (source, top) = CacheAccess.SmallClosure(client, kiln, workspace);
        client.Ok(kiln, "nix", "copy", "--store", source, "--to", NixClient.SocketUri, top);
        client.Ok(kiln, "nix", "path-info", "--store", NixClient.SocketUri, top);

        using var s3 = Kiln.Store.Blobs.S3BlobLocation.Parse(rgw.NewLocation()).CreateClient(); // the same user, from its file
        Assert.Equal(2, (await BlobObjectsAsync(s3, bucket, "kiln/")).Count); // the closure's two NARs
        Assert.DoesNotContain(password, kiln.Log, StringComparison.Ordinal);
        Assert.DoesNotContain(RadosGateway.SecretKey, kiln.Log, StringComparison.Ordinal);
        // (The binding later commands read keeps the password, readable by Kiln's user alone.)
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(kiln.DataDirectory, "database")));
    }
}
