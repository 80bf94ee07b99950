using System.Security.Cryptography;
using Kiln.Nix.Hashing;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Blobs;

[assembly: AssemblyFixture(typeof(S3Server))]

namespace Kiln.Store.Tests;

/// <summary>
/// The contract of <see cref="IBlobStore"/>: a blob is readable under its hash only once committed, whole; content
/// is stored once; an uncommitted writer leaves nothing; deletion, listing, and the sweep of what writers left.
/// Each implementation's tests derive from it: the directory store, and S3 (on s3rver).
/// </summary>
public abstract class BlobStoreContract
{
    protected abstract IBlobStore Create();

    internal static byte[] Bytes(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    protected static async Task<NixHash> PutAsync(IBlobStore store, byte[] data, int chunk = 1 << 20)
    {
        await using var writer = store.CreateWriter();
        for (var offset = 0; offset < data.Length; offset += chunk)
        {
            writer.Write(data.AsSpan(offset, Math.Min(chunk, data.Length - offset)));
        }

        var hash = await writer.CompleteAsync(default);
        await writer.CommitAsync(default);
        return hash;
    }

    private static async Task<byte[]> ReadAsync(IBlobStore store, NixHash hash)
    {
        await using var source = (await store.OpenReadAsync(hash, default))!;
        var stream = await source.OpenStreamAsync(default);
        using var copy = new MemoryStream();
        await stream.CopyToAsync(copy);
        Assert.Equal(source.Length, copy.Length);
        return copy.ToArray();
    }

    [Fact]
    public async Task A_committed_blob_is_read_back_whole_under_its_hash()
    {
        var store = Create();
        var data = Bytes(3 << 20, 1);
        var hash = await PutAsync(store, data);
        Assert.Equal(new NixHash(NixHashAlgorithm.Sha256, SHA256.HashData(data)), hash);
        Assert.True(await store.HasAsync(hash, default));
        Assert.Equal(data, await ReadAsync(store, hash));

        // The same content again is the same blob.
        Assert.Equal(hash, await PutAsync(store, data, chunk: 4096));
        Assert.Single(await ListAsync(store));
    }

    [Fact]
    public async Task An_empty_blob_is_a_blob()
    {
        var store = Create();
        var hash = await PutAsync(store, []);
        Assert.Empty(await ReadAsync(store, hash));
    }

    [Fact]
    public async Task Nothing_is_readable_before_commit_and_nothing_stays_without_it()
    {
        var store = Create();
        var data = Bytes(1 << 20, 2);
        NixHash hash;
        await using (var writer = store.CreateWriter())
        {
            writer.Write(data);
            hash = await writer.CompleteAsync(default);
            Assert.False(await store.HasAsync(hash, default));
            Assert.Null(await store.OpenReadAsync(hash, default));
        }

        Assert.False(await store.HasAsync(hash, default));
        Assert.Empty(await ListAsync(store));
        Assert.Equal(0, await store.CleanAbandonedAsync(TimeSpan.Zero, default));
    }

    [Fact]
    public async Task Deleted_blobs_are_gone_and_listing_names_each_blob_with_its_size()
    {
        var store = Create();
        var a = await PutAsync(store, Bytes(1000, 3));
        var b = await PutAsync(store, Bytes(2000, 4));
        var listed = await ListAsync(store);
        Assert.Equal(new Dictionary<NixHash, long> { [a] = 1000, [b] = 2000 }, listed.ToDictionary(l => l.Hash, l => l.Length));
        Assert.All(listed, l => Assert.True(DateTimeOffset.UtcNow - l.Written < TimeSpan.FromMinutes(5)));

        Assert.True(await store.DeleteAsync(a, default));
        Assert.False(await store.DeleteAsync(a, default));
        Assert.False(await store.HasAsync(a, default));
        Assert.Null(await store.OpenReadAsync(a, default));
        Assert.Equal([b], (await ListAsync(store)).Select(l => l.Hash));
    }

    // What verification reads: the stored copy's hash, a small blob and one beyond an object store's single part (a
    // multipart object, which has no MD5 of its own to check); null for a blob never stored, or deleted.
    [Fact]
    public async Task The_stored_copy_is_hashed_and_a_missing_one_is_null()
    {
        var store = Create();
        var small = await PutAsync(store, Bytes(100_000, 60));
        var large = await PutAsync(store, Bytes(20 << 20, 61));
        Assert.Equal(small, await store.HashStoredAsync(small, default));
        Assert.Equal(large, await store.HashStoredAsync(large, default));
        Assert.Null(await store.HashStoredAsync(NixHash.Compute(NixHashAlgorithm.Sha256, "never stored"), default));
        Assert.True(await store.DeleteAsync(small, default));
        Assert.Null(await store.HashStoredAsync(small, default));
        Assert.Equal(large, await store.HashStoredAsync(large, default));
    }

    [Fact]
    public async Task A_source_opened_before_a_deletion_still_reads_the_whole_blob()
    {
        var store = Create();
        var data = Bytes(2 << 20, 5);
        var hash = await PutAsync(store, data);
        await using var source = (await store.OpenReadAsync(hash, default))!;
        var stream = await source.OpenStreamAsync(default);
        Assert.True(await store.DeleteAsync(hash, default));
        using var copy = new MemoryStream();
        await stream.CopyToAsync(copy);
        Assert.Equal(data, copy.ToArray());
    }

    protected static async Task<List<StoredBlob>> ListAsync(IBlobStore store)
    {
        var blobs = new List<StoredBlob>();
        await foreach (var blob in store.ListAsync(default))
        {
            blobs.Add(blob);
        }

        return blobs;
    }
}

public sealed class DiskBlobStoreTests : BlobStoreContract, IDisposable
{
    private readonly TempDir _temp = new();

    protected override IBlobStore Create() => new DiskBlobStore(_temp[$"blobs-{Guid.NewGuid():N}"], fsync: false);

    public void Dispose() => _temp.Dispose();
}

public sealed class S3BlobStoreTests(S3Server server) : BlobStoreContract, IDisposable
{
    private readonly TempDir _temp = new();
    private readonly List<S3BlobStore> _stores = [];

    protected override IBlobStore Create() => Create(cacheBytes: 64L << 20);

    private S3BlobStore Create(long cacheBytes, string? location = null)
    {
        var store = new S3BlobStore(S3BlobLocation.Parse(location ?? server.NewLocation()), new LocalBlobCache(_temp[$"cache-{Guid.NewGuid():N}"], cacheBytes));
        _stores.Add(store);
        return store;
    }

    [Fact]
    public async Task A_large_blob_goes_up_in_parts_and_comes_back_through_another_front_doors_cache()
    {
        // 40 MiB: three parts of a multipart upload. A second store on the same bucket (another front door, with an
        // empty cache) reads it from the bucket; a store without a cache reads it without keeping it.
        var location = server.NewLocation();
        var writer = Create(cacheBytes: 64L << 20, location);
        var data = new byte[40 << 20];
        new Random(6).NextBytes(data);
        NixHash hash;
        await using (var blob = writer.CreateWriter())
        {
            for (var offset = 0; offset < data.Length; offset += 1 << 20)
            {
                blob.Write(data.AsSpan(offset, 1 << 20));
            }

            hash = await blob.CompleteAsync(default);
            await blob.CommitAsync(default);
        }

        foreach (var reader in new[] { Create(cacheBytes: 64L << 20, location), Create(cacheBytes: 0, location) })
        {
            Assert.True(await reader.HasAsync(hash, default));
            await using var source = (await reader.OpenReadAsync(hash, default))!;
            Assert.NotNull(source.LocalFile); // a local file either way: the HTTP cache sends it with sendfile
            var stream = await source.OpenStreamAsync(default);
            using var copy = new MemoryStream();
            await stream.CopyToAsync(copy);
            Assert.True(data.AsSpan().SequenceEqual(copy.ToArray()));
        }
    }

    // s3rver stores a body whatever SHA-256 it was signed with: the store finds that out (its probe is stored, then
    // deleted), and its writers compare the ETag with the MD5 they computed instead.
    [Fact]
    public async Task A_server_that_checks_no_body_is_found_out_and_its_probe_left_nowhere()
    {
        var location = server.NewLocation();
        var store = Create(cacheBytes: 64L << 20, location);
        Assert.False(await store.ChecksBodiesAsync());
        var hash = await PutAsync(store, Bytes(100_000, 52));
        Assert.True(await store.HasAsync(hash, default));

        var parsed = S3BlobLocation.Parse(location);
        using var client = parsed.CreateClient();
        var listed = await client.ListObjectsV2Async(new Amazon.S3.Model.ListObjectsV2Request { BucketName = parsed.Bucket, Prefix = parsed.Prefix });
        Assert.Equal([parsed.Prefix + "blobs/" + hash.ToNix32() + ".nar"], (listed.S3Objects ?? []).Select(o => o.Key));
    }

    [Fact]
    public async Task The_local_cache_keeps_recent_blobs_within_its_bound()
    {
        var cacheDirectory = _temp["bounded"];
        var cache = new LocalBlobCache(cacheDirectory, limit: 3 << 20);
        var store = new S3BlobStore(S3BlobLocation.Parse(server.NewLocation()), cache);
        _stores.Add(store);
        var hashes = new List<NixHash>();
        for (var i = 0; i < 5; i++)
        {
            var data = new byte[1 << 20];
            new Random(10 + i).NextBytes(data);
            await using var writer = store.CreateWriter();
            writer.Write(data);
            hashes.Add(await writer.CompleteAsync(default));
            await writer.CommitAsync(default);
        }

        Assert.True(cache.Bytes <= 3 << 20);
        Assert.False(cache.Contains(hashes[0]));
        Assert.True(cache.Contains(hashes[4]));

        // Every blob is still in the bucket; reading an evicted one brings it back into the cache.
        await using (var source = await store.OpenReadAsync(hashes[0], default))
        {
            Assert.NotNull(source);
        }

        Assert.True(cache.Contains(hashes[0]));
        Assert.True(cache.Bytes <= 3 << 20);

        // A restart finds the kept blobs again.
        var again = new LocalBlobCache(cacheDirectory, limit: 3 << 20);
        Assert.Equal(cache.Bytes, again.Bytes);
        Assert.True(again.Contains(hashes[0]));
    }

    [Fact]
    public async Task A_blob_changed_in_the_bucket_is_refused_not_served()
    {
        var location = server.NewLocation();
        var store = Create(cacheBytes: 64L << 20, location);
        var data = new byte[100_000];
        new Random(7).NextBytes(data);
        NixHash hash;
        await using (var writer = store.CreateWriter())
        {
            writer.Write(data);
            hash = await writer.CompleteAsync(default);
            await writer.CommitAsync(default);
        }

        var file = server.ObjectFiles(location).Single(f => f.Contains(hash.ToNix32(), StringComparison.Ordinal));
        var bytes = File.ReadAllBytes(file);
        bytes[500] ^= 0xff;
        File.WriteAllBytes(file, bytes);

        // Refused by the SDK's own check of the server's MD5 where the server keeps one (s3rver does), else by Kiln's
        // hash of what arrived: a storage failure either way, and nothing cached.
        var reader = Create(cacheBytes: 64L << 20, location);
        var error = await Assert.ThrowsAsync<IOException>(async () => await reader.OpenReadAsync(hash, default));
        Assert.Equal(5, error.HResult);
        Assert.Null(await reader.OpenReadAsync(hash, default).AsTask().ContinueWith(t => t.IsFaulted ? null : t.Result, TaskScheduler.Default));
        Assert.Equal(0, (await reader.CleanAbandonedAsync(TimeSpan.Zero, default))); // no spool left behind
    }

    [Fact]
    public async Task An_unreachable_bucket_is_a_storage_failure()
    {
        var location = $"s3://nobucket/kiln?endpoint={Uri.EscapeDataString("http://127.0.0.1:1")}&credentials_file={Uri.EscapeDataString(server.CredentialsFile)}";
        var store = Create(cacheBytes: 0, location);
        var hash = NixHash.Compute(NixHashAlgorithm.Sha256, "x");
        var error = await Assert.ThrowsAsync<IOException>(async () => await store.HasAsync(hash, default));
        Assert.Equal(5, error.HResult);
        Assert.StartsWith("the blob store could not be read", error.Message, StringComparison.Ordinal);
    }

    // --nar-redirect: a presigned GET for one object, for a while. (s3rver serves it without checking the signature or
    // the expiry, so what is checked here is the URL's form and that it reaches the blob; AWS checks the rest.)
    [Fact]
    public async Task A_link_is_a_presigned_url_that_fetches_the_blob()
    {
        var store = Create(cacheBytes: 0);
        var data = Bytes(100_000, 9);
        var hash = await PutAsync(store, data);
        var link = store.LinkFor(hash, TimeSpan.FromMinutes(5))!;
        Assert.StartsWith(server.Endpoint + "/", link.AbsoluteUri, StringComparison.Ordinal);
        Assert.Contains(hash.ToNix32(), link.AbsolutePath, StringComparison.Ordinal);
        Assert.Contains("X-Amz-Expires=300", link.Query, StringComparison.Ordinal);
        Assert.Contains("X-Amz-Signature=", link.Query, StringComparison.Ordinal);
        using var http = new HttpClient();
        Assert.Equal(data, await http.GetByteArrayAsync(link));

        // The directory store has no URLs to give: its blobs are this server's to send.
        using var temp = new TempDir();
        Assert.Null(new DiskBlobStore(temp.Path, fsync: false).LinkFor(hash, TimeSpan.FromMinutes(5)));
    }

    [Fact]
    public void Locations_are_read_and_refused_clearly()
    {
        var location = S3BlobLocation.Parse("s3://bucket/a/b?region=eu-west-1&endpoint=https%3A%2F%2Fs3.example&profile=kiln");
        Assert.Equal(("bucket", "a/b/", "eu-west-1", "https://s3.example/", true, "kiln"),
            (location.Bucket, location.Prefix, location.Region, location.Endpoint!.ToString(), location.PathStyle, location.Profile));
        var aws = S3BlobLocation.Parse("s3://bucket");
        Assert.Equal(("", "us-east-1", false, (Uri?)null), (aws.Prefix, aws.Region, aws.PathStyle, aws.Endpoint));
        Assert.Contains("no credentials", Assert.Throws<ArgumentException>(() => S3BlobLocation.Parse("s3://key:secret@bucket/x")).Message, StringComparison.Ordinal);
        Assert.Contains("'acl'", Assert.Throws<ArgumentException>(() => S3BlobLocation.Parse("s3://bucket/x?acl=public")).Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => S3BlobLocation.Parse("s3://bucket/x?endpoint=ftp://x"));
        Assert.Throws<ArgumentException>(() => S3BlobLocation.Parse("gs://bucket/x"));
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
