using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;

namespace Kiln.Store.Tests;

/// <summary>
/// Two stores as two front doors (each its own data directory) on one database and one real S3 bucket (s3rver): a
/// compressed NAR kept through one is served by the other, and when the collector of either takes the path, its NAR,
/// and the kept file go from the bucket.
/// </summary>
public sealed class SharedStoreTests(S3Server s3) : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private KilnStore _a = null!, _b = null!;
    private string _bucket = null!;

    private static readonly byte[] HelloNar = File.ReadAllBytes(Repo.Golden("nar", "hello.txt.nar"));

    public async ValueTask InitializeAsync()
    {
        _bucket = s3.NewLocation();
        var database = "sqlite://" + _temp["shared.db"];
        _a = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["a"], MetadataUrl = database, BlobStoreUrl = _bucket }, default);
        _b = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["b"], MetadataUrl = database, BlobStoreUrl = _bucket }, default);
    }

    public async ValueTask DisposeAsync()
    {
        await _a.DisposeAsync();
        await _b.DisposeAsync();
        _temp.Dispose();
    }

    [Fact]
    public async Task A_file_kept_through_one_front_door_is_served_by_the_other_and_collected_from_the_bucket()
    {
        var path = MetadataContract.P("hello");
        var compressed = "not really xz, but what the client sent"u8.ToArray();
        var name = NixHash.Compute(NixHashAlgorithm.Sha256, compressed).ToNix32() + ".nar.xz";
        var narHash = NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar);
        using (var view = await _a.OpenViewAsync("alice", default))
        {
            await view.AddToStoreAsync(new ValidPathInfo { Path = path, NarHash = narHash, NarSize = HelloNar.Length }, new MemoryStream(HelloNar), false, true, default);
            Assert.True(await view.KeepNarFileAsync(name, narHash, "xz", new MemoryStream(compressed), default));
        }

        Assert.Contains(s3.ObjectFiles(_bucket), f => f.Contains("nar-files", StringComparison.Ordinal) && f.Contains(name, StringComparison.Ordinal));
        using (var view = await _b.OpenViewAsync("alice", default))
        {
            await using var kept = (await view.OpenKeptNarFileAsync(name, default))!;
            using var copy = new MemoryStream();
            await (await kept.OpenStreamAsync(default)).CopyToAsync(copy);
            Assert.Equal(compressed, copy.ToArray());
        }

        // Another account may not read it through either front door (it has no path with that NAR).
        using (var view = await _b.OpenViewAsync("mallory", default))
        {
            Assert.Null(await view.OpenKeptNarFileAsync(name, default));
        }

        using (var gc = await _b.OpenViewAsync("alice", default))
        {
            var result = await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteSpecific, new HashSet<StorePath> { path }, 0), default);
            Assert.Equal([path], result.Paths);
        }

        Assert.DoesNotContain(s3.ObjectFiles(_bucket), f => f.Contains(name, StringComparison.Ordinal) || f.Contains(narHash.ToNix32(), StringComparison.Ordinal));
        using (var view = await _a.OpenViewAsync("alice", default))
        {
            Assert.Null(await view.OpenKeptNarFileAsync(name, default));
        }
    }
}
