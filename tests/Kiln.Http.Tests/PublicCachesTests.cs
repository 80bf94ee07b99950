using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Http.Tests;

/// <summary>
/// Several public accounts answer an anonymous request together. When two hold the same path name, the globally
/// trusted record is the one served, whichever account is older: otherwise a tenant who made her account public
/// first could shadow another public cache's path with an unsigned upload of her own bytes under its name.
/// </summary>
public sealed class PublicCachesTests : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private KilnStore _store = null!;
    private BinaryCache _cache = null!;

    public async ValueTask InitializeAsync()
    {
        _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"] }, default);
        _cache = new BinaryCache(_store, new BinaryCacheOptions { StagingDirectory = _temp["staging"] }, NullLogger.Instance);
    }

    public async ValueTask DisposeAsync()
    {
        await _store.DisposeAsync();
        _temp.Dispose();
    }

    [Fact]
    public async Task A_tenants_unsigned_upload_does_not_shadow_another_public_caches_trusted_path()
    {
        // Mallory's account is created (and made public) first, so it comes first among the public accounts.
        using var mallory = await _store.OpenViewAsync("mallory", default);
        using var cache = await _store.OpenViewAsync("company-cache", default);
        await _store.Accounts.SetPublicCacheAsync(mallory.AccountId, true, default);
        await _store.Accounts.SetPublicCacheAsync(cache.AccountId, true, default);

        // The company cache holds a content-addressed path (globally trusted: its name follows from its content).
        var genuine = NarOf("the real thing\n");
        var trusted = await cache.AddContentAddressedAsync("tool", ContentAddressMethodAndAlgorithm.ParseCamString("fixed:r:sha256"),
            new MemoryStream(genuine), new SortedSet<StorePath>(), false, default);

        // Mallory uploads other bytes under the same name, as an ordinary (input-addressed, unsigned) path.
        var fake = NarOf("a backdoor\n");
        await mallory.AddToStoreAsync(new ValidPathInfo
        {
            Path = trusted.Path,
            NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, fake),
            NarSize = fake.Length,
        }, new MemoryStream(fake), false, true, default);

        var narinfo = await GetAsync($"/{trusted.Path.HashPart}.narinfo");
        Assert.Contains($"NarHash: sha256:{trusted.NarHash.ToNix32()}\n", narinfo, StringComparison.Ordinal);

        // The worker protocol's reading of the same views agrees.
        using var anonymous = _store.OpenView(await _store.AnonymousCallerAsync(default));
        Assert.Equal(trusted.NarHash, (await anonymous.QueryPathInfosAsync([trusted.Path], default))[trusted.Path].NarHash);
    }

    private async Task<string> GetAsync(string url)
    {
        var context = new DefaultHttpContext();
        context.Request.Method = "GET";
        context.Request.Path = url;
        var body = new MemoryStream();
        context.Response.Body = body;
        await _cache.HandleAsync(context);
        Assert.Equal(200, context.Response.StatusCode);
        return Encoding.UTF8.GetString(body.ToArray());
    }

    private static byte[] NarOf(string contents) =>
        NarBuilder.Start().Tokens("(", "type", "regular", "contents", contents, ")").ToArray();
}
