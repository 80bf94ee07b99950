using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.Signing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Upstream;

namespace Kiln.Store.Tests;

/// <summary>
/// Substitution against a real HTTP server of the test's own (<see cref="FileServer"/>) that serves what the test
/// decides — including what an attacker would serve.
/// </summary>
public sealed class UpstreamSubstituterTests : IAsyncLifetime
{
    private static readonly byte[] HelloNar = File.ReadAllBytes(Repo.Golden("nar", "hello.txt.nar"));

    private readonly TempDir _temp = new();
    private readonly FileServer _server = new();
    private KilnStore _store = null!;

    public async ValueTask InitializeAsync() => _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"] }, default);

    public async ValueTask DisposeAsync()
    {
        await _server.DisposeAsync();
        await _store.DisposeAsync();
        _temp.Dispose();
    }

    private static ValidPathInfo Declared(StorePath path, byte[] nar) => new()
    {
        Path = path,
        NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar),
        NarSize = nar.Length,
    };

    // A narinfo for `path` claiming `nar`'s hash and size, signed with `key`, its NAR at nar/<hash>.nar (not served unless added).
    private void Publish(StorePath path, byte[] nar, SecretKey key)
    {
        var narHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar);
        var info = new NarInfo { StorePath = path, Url = $"nar/{narHash.ToNix32()}.nar", Compression = "none", NarHash = narHash, NarSize = nar.Length }.WithSignature(key);
        _server.Files[$"{path.HashPart}.narinfo"] = Encoding.UTF8.GetBytes(info.ToString());
    }

    [Fact]
    public async Task Knowing_a_nar_hash_another_account_holds_gives_nothing()
    {
        // Bob uploads a private path. Mallory runs a cache of her own, trusted only by her, whose narinfo claims a path of
        // her choosing has Bob's NAR hash; she cannot serve the NAR itself (she does not have it). On 8b92d5f Kiln saw
        // the blob was there and registered it for her without a download: she read Bob's secret.
        var secret = MetadataContract.P("bobs-secret");
        using (var bob = await _store.OpenViewAsync("bob", default))
        {
            await bob.AddToStoreAsync(Declared(secret, HelloNar), new MemoryStream(HelloNar), false, true, default);
        }

        var malloryKey = SecretKey.Generate("mallory-cache-1");
        var stolen = MetadataContract.P("stolen");
        Publish(stolen, HelloNar, malloryKey);
        using var mallory = await _store.OpenViewAsync("mallory", default);
        await _store.Settings.SetUpstreamSettingsAsync(mallory.AccountId, _server.Url, malloryKey.PublicKey.ToString(), null, default);
        using var again = await _store.OpenViewAsync("mallory", default);
        var warnings = new List<string>();
        var valid = await again.SubstituteAsync([stolen], default, warnings.Add);

        Assert.Empty(valid);
        Assert.Null(await again.OpenNarAsync(stolen, default));
        Assert.Contains($"nar/{NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar).ToNix32()}.nar", _server.Requests); // Kiln asked her for the bytes
        Assert.Contains(warnings, w => w.Contains("building it instead", StringComparison.Ordinal));

        // Had she had the bytes (served them, and they hashed right), she would get them: that is no leak.
        _server.Files[$"nar/{NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar).ToNix32()}.nar"] = HelloNar;
        Assert.Contains(stolen, await again.SubstituteAsync([stolen], default, warnings.Add));
    }

    [Fact]
    public async Task Joining_a_download_of_the_same_nar_url_under_another_hash_yields_nothing()
    {
        // Found in review (on 1582f72): two narinfos of Mallory's cache share one NAR URL, one with the hash of a NAR she
        // has, one with Bob's; the second request joined the first's download and then took Bob's blob by its hash.
        var secret = MetadataContract.P("bobs-secret");
        using (var bob = await _store.OpenViewAsync("bob", default))
        {
            await bob.AddToStoreAsync(Declared(secret, HelloNar), new MemoryStream(HelloNar), false, true, default);
        }

        var mine = File.ReadAllBytes(Repo.Golden("nar", "script.sh.nar"));
        var key = SecretKey.Generate("mallory-cache-1");
        var decoy = MetadataContract.P("decoy");
        var stolen = MetadataContract.P("stolen");
        void Publish(StorePath path, byte[] nar)
        {
            var hash = NixHash.Compute(NixHashAlgorithm.Sha256, nar);
            var info = new NarInfo { StorePath = path, Url = "nar/shared.nar", Compression = "none", NarHash = hash, NarSize = nar.Length }.WithSignature(key);
            _server.Files[$"{path.HashPart}.narinfo"] = Encoding.UTF8.GetBytes(info.ToString());
        }

        Publish(decoy, mine);
        Publish(stolen, HelloNar); // Bob's hash and size; Mallory never has these bytes
        _server.Files["nar/shared.nar"] = mine;
        _server.Slow["nar/shared.nar"] = true;
        using var mallory = await _store.OpenViewAsync("mallory", default);
        await _store.Settings.SetUpstreamSettingsAsync(mallory.AccountId, _server.Url, key.PublicKey.ToString(), null, default);
        using var a = await _store.OpenViewAsync("mallory", default);
        using var b = await _store.OpenViewAsync("mallory", default);
        var first = a.SubstituteAsync([decoy], default, _ => { });
        await Task.Delay(500);
        var second = b.SubstituteAsync([stolen], default, _ => { });
        await Task.WhenAll(first, second);
        Assert.Contains(decoy, await first);
        Assert.DoesNotContain(stolen, await second);
        Assert.Null(await b.OpenNarAsync(stolen, default));
    }

    [Fact]
    public async Task Remembered_narinfo_answers_stay_within_their_bound()
    {
        using var substituter = new UpstreamSubstituter { MaxNarInfos = 10 };
        var plan = new UpstreamPlan([new UpstreamCache(new Uri(_server.Url), null)], [], []);
        for (var i = 0; i < 50; i++)
        {
            Assert.Null(await substituter.LookupAsync(plan, MetadataContract.P($"absent-{i}"), _ => { }, default));
            Assert.True(substituter.RememberedNarInfos <= 10, $"{substituter.RememberedNarInfos} answers kept");
        }
    }
}
