using Amazon.S3.Model;
using Kiln.Nix.Hashing;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Blobs;

[assembly: AssemblyFixture(typeof(RadosGateway))]

namespace Kiln.Store.Tests;

/// <summary>
/// The S3 blob store against radosgw, an S3 server that checks what s3rver does not: the whole blob-store contract with
/// every request signed and checked; wrong credentials refused as a storage failure that names no secret; a
/// presigned link (<c>--nar-redirect</c>) that works for its one object until it expires, and not once changed; a
/// multipart upload a killed server left behind, found and aborted by the cleanup.
/// </summary>
public sealed class RadosBlobStoreTests(RadosGateway rgw) : BlobStoreContract, IDisposable
{
    private readonly TempDir _temp = new();
    private readonly List<S3BlobStore> _stores = [];

    protected override IBlobStore Create() => Create(rgw.NewLocation(), cacheBytes: 64L << 20);

    private S3BlobStore Create(string location, long cacheBytes)
    {
        var store = new S3BlobStore(S3BlobLocation.Parse(location), new LocalBlobCache(_temp[$"cache-{Guid.NewGuid():N}"], cacheBytes));
        _stores.Add(store);
        return store;
    }

    [Fact]
    public async Task A_blob_larger_than_a_part_goes_up_in_parts_and_comes_back_whole()
    {
        var location = rgw.NewLocation();
        var data = Bytes((20 << 20) + 12345, 21); // two parts, the second short
        var hash = await PutAsync(Create(location, cacheBytes: 64L << 20), data);

        var reader = Create(location, cacheBytes: 0); // another front door, nothing cached
        await using var source = (await reader.OpenReadAsync(hash, default))!;
        using var copy = new MemoryStream();
        await (await source.OpenStreamAsync(default)).CopyToAsync(copy);
        Assert.True(data.AsSpan().SequenceEqual(copy.ToArray()));
    }

    // A single-part blob is committed with its PUT alone: radosgw checks the body against the blob's SHA-256 it was
    // signed with (the store finds that out once, by a probe radosgw refuses), so no HEAD follows to ask its size, and
    // the writer needs no MD5 (a multipart upload, whose parts the SDK signs, still asks). One round trip per blob
    // fewer, which on a remote bucket is most of a small blob's cost.
    [Fact]
    public async Task A_blob_the_server_checks_is_committed_with_one_request()
    {
        rgw.Require();
        var store = Create(rgw.NewLocation(), cacheBytes: 64L << 20);
        Assert.True(await store.ChecksBodiesAsync());
        await PutAsync(store, Bytes(1000, 41)); // the client's first request is made
        var before = rgw.Requests();
        await PutAsync(store, Bytes(100_000, 42));
        await PutAsync(store, Bytes(3 << 20, 43));
        Assert.Equal(2, rgw.Requests() - before);

        before = rgw.Requests();
        await PutAsync(store, Bytes((16 << 20) + 1, 44)); // initiate, two parts, complete; then its size asked
        Assert.Equal(5, rgw.Requests() - before);
    }

    // A blob shipped ahead of its commit is looked for again at the commit (the sweep may have taken it meanwhile),
    // unless the caller held the collection lock all along: then the commit costs no request at all.
    [Fact]
    public async Task A_shipped_blob_is_looked_for_at_its_commit_only_when_the_lock_was_let_go_in_between()
    {
        rgw.Require();
        var store = Create(rgw.NewLocation(), cacheBytes: 64L << 20);
        Assert.True(await store.ChecksBodiesAsync()); // (its probe not among the requests counted)
        await PutAsync(store, Bytes(1000, 45)); // the client's first request is made
        foreach (var (kept, seed, requests) in new[] { (true, 46, 0), (false, 47, 1) })
        {
            await using var writer = store.CreateWriter();
            writer.Write(Bytes(100_000, seed));
            var hash = await writer.CompleteAsync(default);
            Assert.True(await writer.ShipAsync(default));
            var before = rgw.Requests();
            await writer.CommitAsync(shippedCopyKept: kept, default);
            Assert.Equal(requests, rgw.Requests() - before);
            Assert.True(await store.HasAsync(hash, default));
        }
    }

    // Through a store's upload batch (AddMultipleToStore): blobs shipped while the collection lock is held, and held
    // until the commit (a session's temporary roots keep it so), cost their PUT alone; shipped without it, each is
    // looked for again at the commit.
    [Theory]
    [InlineData(true, 2)]
    [InlineData(false, 4)]
    public async Task A_batch_shipped_within_one_hold_of_the_lock_is_committed_without_asking_the_bucket(bool held, int requests)
    {
        rgw.Require();
        await using var store = await KilnStore.OpenAsync(new StoreOptions
        {
            DataDirectory = _temp[$"store-{Guid.NewGuid():N}"],
            BlobStoreUrl = rgw.NewLocation(),
        }, default);
        using var view = await store.OpenViewAsync("alice", default);
        var (hello, tree) = (MetadataContract.P("batch-hello"), MetadataContract.P("batch-tree"));
        await store.Blobs.HasAsync(NixHash.Compute(NixHashAlgorithm.Sha256, Bytes(100, 53)), default); // the client's first request
        Assert.True(await ((S3BlobStore)store.Blobs).ChecksBodiesAsync()); // and the probe answered
        var hold = held ? await store.GcLock.SharedAsync(default) : null;
        var before = rgw.Requests();
        await using (var batch = view.BeginUploads(false, true))
        {
            await batch.AddAsync(StoreTests.Declared(hello, StoreTests.HelloNar), new MemoryStream(StoreTests.HelloNar), default);
            await batch.AddAsync(StoreTests.Declared(tree, StoreTests.TreeNar), new MemoryStream(StoreTests.TreeNar), default);
            for (var waited = 0; rgw.Requests() - before < 2; waited += 20) // both shipped (a commit stops ships not begun)
            {
                Assert.True(waited < 10_000, "the batch's blobs were never shipped");
                await Task.Delay(20);
            }

            await batch.CommitAsync(default);
        }

        Assert.Equal(requests, rgw.Requests() - before);
        if (hold is not null)
        {
            await hold.DisposeAsync();
        }

        Assert.Equal(2, (await view.QueryValidPathsAsync([hello, tree], default)).Count);
    }

    // The writer signs its PUT with the SHA-256 it computed as the bytes came in, not with a hash of the spool file it
    // sends: a spool damaged on local disk in between is refused by the server, and nothing is stored under the name.
    [Fact]
    public async Task A_blob_changed_on_local_disk_after_it_was_hashed_is_refused_by_the_server_and_not_stored()
    {
        rgw.Require();
        var cacheDirectory = _temp[$"cache-{Guid.NewGuid():N}"];
        var store = new S3BlobStore(S3BlobLocation.Parse(rgw.NewLocation()), new LocalBlobCache(cacheDirectory, 64L << 20));
        _stores.Add(store);
        Assert.True(await store.ChecksBodiesAsync()); // radosgw checks bodies: the writer computes no MD5 to fall back on

        await using var writer = store.CreateWriter();
        writer.Write(Bytes(100_000, 51));
        var hash = await writer.CompleteAsync(default);
        var spool = Assert.Single(Directory.GetFiles(Path.Combine(cacheDirectory, "tmp")));
        var bytes = await File.ReadAllBytesAsync(spool);
        bytes[500] ^= 1;
        await File.WriteAllBytesAsync(spool, bytes);

        var refused = await Assert.ThrowsAsync<IOException>(() => writer.CommitAsync(default).AsTask()); // a storage failure
        Assert.Equal(5, refused.HResult);
        Assert.Contains("XAmzContentSHA256Mismatch", refused.Message, StringComparison.Ordinal);
        Assert.False(await store.HasAsync(hash, default));
    }

    [Fact]
    public async Task Wrong_credentials_are_a_storage_failure_that_names_no_secret()
    {
        const string wrongSecret = "not-the-secret-at-all-0123456789abcdefghij";
        var credentials = _temp["wrong.credentials"];
        await File.WriteAllTextAsync(credentials, $"[default]\naws_access_key_id = {RadosGateway.AccessKey}\naws_secret_access_key = {wrongSecret}\n");
        var store = Create(rgw.NewLocation(credentialsFile: credentials), cacheBytes: 0);

        var read = await Assert.ThrowsAsync<IOException>(async () => await store.HasAsync(NixHash.Compute(NixHashAlgorithm.Sha256, "x"), default));
        Assert.Equal(5, read.HResult);
        Assert.StartsWith("the blob store could not be read", read.Message, StringComparison.Ordinal);

        var written = await Assert.ThrowsAsync<IOException>(() => PutAsync(store, Bytes(1000, 3)));
        Assert.Equal(5, written.HResult);
        Assert.IsType<Amazon.S3.AmazonS3Exception>(written.InnerException); // Kiln's own signed PUT refused, the SDK's said why
        foreach (var message in new[] { read.ToString(), written.ToString() })
        {
            Assert.DoesNotContain(wrongSecret, message, StringComparison.Ordinal);
            Assert.DoesNotContain(RadosGateway.SecretKey, message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_link_fetches_its_one_blob_until_it_expires_and_not_once_changed()
    {
        var store = Create(rgw.NewLocation(), cacheBytes: 0);
        var data = Bytes(100_000, 9);
        var hash = await PutAsync(store, data);
        var other = await PutAsync(store, Bytes(1000, 10));
        using var http = new HttpClient();

        var link = store.LinkFor(hash, TimeSpan.FromMinutes(5))!;
        Assert.Equal(data, await http.GetByteArrayAsync(link));

        // Another object under the same signature, or a longer life: the gateway refuses both.
        var elsewhere = new Uri(link.AbsoluteUri.Replace(hash.ToNix32(), other.ToNix32(), StringComparison.Ordinal));
        using (var response = await http.GetAsync(elsewhere))
        {
            Assert.Equal(System.Net.HttpStatusCode.Forbidden, response.StatusCode);
        }

        var longer = new Uri(link.AbsoluteUri.Replace("X-Amz-Expires=300", "X-Amz-Expires=3000", StringComparison.Ordinal));
        using (var response = await http.GetAsync(longer))
        {
            Assert.Equal(System.Net.HttpStatusCode.Forbidden, response.StatusCode);
        }

        // A short-lived one works at once, and not after it expired. (Its signing time is whole seconds and its life is
        // rounded to them: a 1 s link could expire before a slow machine's first GET, as CI once saw.)
        var brief = store.LinkFor(hash, TimeSpan.FromSeconds(3))!;
        Assert.Equal(data, await http.GetByteArrayAsync(brief));
        await Task.Delay(TimeSpan.FromSeconds(5));
        using (var response = await http.GetAsync(brief))
        {
            Assert.Equal(System.Net.HttpStatusCode.Forbidden, response.StatusCode);
        }
    }

    [Fact]
    public async Task A_multipart_upload_a_killed_server_left_is_aborted_by_the_cleanup_once_old_enough()
    {
        var location = S3BlobLocation.Parse(rgw.NewLocation());
        using var client = location.CreateClient();
        var key = location.Prefix + "blobs/" + NixHash.Compute(NixHashAlgorithm.Sha256, "never finished").ToNix32() + ".nar";
        var upload = await client.InitiateMultipartUploadAsync(new InitiateMultipartUploadRequest { BucketName = location.Bucket, Key = key });
        await client.UploadPartAsync(new UploadPartRequest
        {
            BucketName = location.Bucket,
            Key = key,
            UploadId = upload.UploadId,
            PartNumber = 1,
            InputStream = new MemoryStream(Bytes(1 << 20, 4)),
        });
        Assert.Single((await client.ListMultipartUploadsAsync(new ListMultipartUploadsRequest { BucketName = location.Bucket })).MultipartUploads);

        var store = new S3BlobStore(location, new LocalBlobCache(_temp["cleanup-cache"], 0));
        _stores.Add(store);
        Assert.Equal(0, await store.CleanAbandonedAsync(TimeSpan.FromHours(1), default)); // (an upload in flight is young)
        Assert.Equal(1, await store.CleanAbandonedAsync(TimeSpan.Zero, default));
        Assert.Empty((await client.ListMultipartUploadsAsync(new ListMultipartUploadsRequest { BucketName = location.Bucket })).MultipartUploads ?? []);
        Assert.False(await store.HasAsync(NixHash.Compute(NixHashAlgorithm.Sha256, "never finished"), default));
    }

    public void Dispose()
    {
        foreach (var store in _stores)
        {
            store.Dispose();
        }

        _temp.Dispose();
    }
}
