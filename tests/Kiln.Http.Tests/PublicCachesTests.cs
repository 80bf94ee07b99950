using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;

namespace Kiln.Http.Tests;

/// <summary>
/// Several public accounts answer an anonymous request together. When two hold the same path name, the globally
/// trusted record is the one served, whichever account is older: otherwise a tenant who made her account public
/// first could shadow another public cache's path with an unsigned upload of her own bytes under its name.
/// </summary>
public sealed class PublicCachesTests : CacheFixture
{
    [Fact]
    public async Task A_tenants_unsigned_upload_does_not_shadow_another_public_caches_trusted_path()
    {
        // Mallory's account is created (and made public) first, so it comes first among the public accounts.
        using var mallory = await Store.OpenViewAsync("mallory", default);
        using var cache = await Store.OpenViewAsync("company-cache", default);
        await Store.Accounts.SetPublicCacheAsync(mallory.AccountId, true, default);
        await Store.Accounts.SetPublicCacheAsync(cache.AccountId, true, default);

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

        var (status, narinfo) = await GetAsync($"/{trusted.Path.HashPart}.narinfo");
        Assert.Equal(200, status);
        Assert.Contains($"NarHash: sha256:{trusted.NarHash.ToNix32()}\n", narinfo, StringComparison.Ordinal);

        // The worker protocol's reading of the same views agrees.
        using var anonymous = Store.OpenView(await Store.AnonymousCallerAsync(default));
        Assert.Equal(trusted.NarHash, (await anonymous.QueryPathInfosAsync([trusted.Path], default))[trusted.Path].NarHash);
    }

    private static byte[] NarOf(string contents) =>
        NarBuilder.Start().Tokens("(", "type", "regular", "contents", contents, ")").ToArray();
}
