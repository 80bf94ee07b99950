using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.Http.Tests;

public sealed class NarInfoCacheTests : IAsyncLifetime
{
    private readonly string _directory = Directory.CreateTempSubdirectory("kiln-narinfo-cache-").FullName;
    private SqliteMetadataStore _metadata = null!;

    public async ValueTask InitializeAsync()
    {
        _metadata = new SqliteMetadataStore(Path.Combine(_directory, "kiln.db"));
        await _metadata.MigrateAsync(default);
    }

    public async ValueTask DisposeAsync()
    {
        await _metadata.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    [Fact]
    public async Task Answers_are_kept_per_view_until_a_path_record_changes()
    {
        var (account, info) = await RegisterAsync("kept");
        var path = info.Path;

        var cache = new NarInfoCache(() => _metadata.PathRecordsVersion);
        Assert.Null(cache.Find("1", path.HashPart));
        cache.Add("1", path.HashPart, [1, 2, 3], cache.Version);
        Assert.Equal([1, 2, 3], cache.Find("1", path.HashPart));
        Assert.Null(cache.Find("1,2", path.HashPart)); // another view, another answer

        // An answer read before a change is never given after it, even when it is added after the change.
        var before = cache.Version;
        await _metadata.AddSignaturesAsync(account, path, ["k-1:" + Convert.ToBase64String(new byte[64])], default);
        Assert.Null(cache.Find("1", path.HashPart));
        cache.Add("1", path.HashPart, [4], before);
        Assert.Null(cache.Find("1", path.HashPart));
    }

    [Fact]
    public async Task An_answer_vouches_for_its_NAR_in_its_own_view_until_a_path_record_changes()
    {
        var (account, info) = await RegisterAsync("shown");
        var path = info.Path;
        var nar = info.NarHash.ToNix32();

        var cache = new NarInfoCache(() => _metadata.PathRecordsVersion);
        cache.Add("1", path.HashPart, [1], cache.Version, narHash: null);
        Assert.False(cache.ShowsNar("1", nar)); // an answer added without its NAR vouches for none
        cache.Add("1", path.HashPart, [1], cache.Version, narHash: nar);
        Assert.True(cache.ShowsNar("1", nar));
        Assert.False(cache.ShowsNar("1,2", nar));

        var before = cache.Version;
        await _metadata.AddSignaturesAsync(account, path, ["k-1:" + Convert.ToBase64String(new byte[64])], default);
        Assert.False(cache.ShowsNar("1", nar));
        cache.Add("1", path.HashPart, [1], before, narHash: nar); // read before the change: never vouches after it
        Assert.False(cache.ShowsNar("1", nar));
    }

    [Fact]
    public void It_stays_within_its_capacity()
    {
        var cache = new NarInfoCache(() => _metadata.PathRecordsVersion, capacity: 10);
        for (var i = 0; i < 25; i++)
        {
            cache.Add("1", $"hash{i}", [(byte)i], cache.Version, narHash: $"nar{i}");
        }

        Assert.Equal([24], cache.Find("1", "hash24"));
        Assert.Null(cache.Find("1", "hash0"));
        Assert.True(cache.ShowsNar("1", "nar24"));
        Assert.False(cache.ShowsNar("1", "nar0"));

        // The same answer added again and again still counts towards the bound of the NARs it vouches for.
        for (var i = 0; i < 25; i++)
        {
            cache.Add("1", "same", [1], cache.Version, narHash: $"other{i}");
        }

        Assert.False(cache.ShowsNar("1", "other0"));
    }

    // A path of alice's named NAME, registered as uploaded.
    private async Task<(long Account, ValidPathInfo Info)> RegisterAsync(string name)
    {
        var account = await _metadata.GetOrCreateAccountAsync("alice", default);
        var info = new ValidPathInfo { Path = StorePath.FromHash(new byte[20], name), NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, name), NarSize = 8 };
        await _metadata.RegisterAsync(account, [new NewPath(info, Provenance.Uploaded, PathTrust.Untrusted, null)], default);
        return (account, info);
    }
}
