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

    [Fact]
    public async Task A_narinfo_read_counts_as_a_use_of_the_record_that_answered_and_of_no_other()
    {
        // Retention keeps paths for a time after their last use: a CI runner that substitutes a path from the cache
        // every day uses it, even when it never speaks SSH. Each read (the first, answered from the database, and
        // later ones, answered from memory) counts for the account whose record answered, never for another's.
        using var cache = await Store.OpenViewAsync("company-cache", default);
        using var bob = await Store.OpenViewAsync("bob", default);
        await Store.Accounts.SetPublicCacheAsync(cache.AccountId, true, default);
        var nar = NarOf("used daily\n");
        var info = new ValidPathInfo { Path = StorePath.FromHash(new byte[20], "daily"), NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar), NarSize = nar.Length };
        await cache.AddToStoreAsync(info, new MemoryStream(nar), false, false, default);
        await bob.AddToStoreAsync(info, new MemoryStream(nar), false, false, default);
        await Store.Usage.FlushAsync(default); // (what the uploads counted)
        Assert.False(Store.Usage.IsPendingUse(cache.AccountId, info.Path));

        Assert.Equal(200, (await GetAsync($"/{info.Path.HashPart}.narinfo")).Status);
        Assert.True(Store.Usage.IsPendingUse(cache.AccountId, info.Path));
        Assert.False(Store.Usage.IsPendingUse(bob.AccountId, info.Path));
        await Store.Usage.FlushAsync(default);
        var lastUsed = (await Store.Metadata.GetGraphAsync(cache.AccountId, default)).Single(n => n.Path == info.Path).LastUsed;
        Assert.InRange(lastUsed, DateTimeOffset.UtcNow.ToUnixTimeSeconds() - 60, DateTimeOffset.UtcNow.ToUnixTimeSeconds() + 1);

        Assert.Equal(200, (await GetAsync($"/{info.Path.HashPart}.narinfo")).Status); // (answered from memory now)
        Assert.True(Store.Usage.IsPendingUse(cache.AccountId, info.Path));
        Assert.False(Store.Usage.IsPendingUse(bob.AccountId, info.Path));
    }

    private static byte[] NarOf(string contents) =>
        NarBuilder.Start().Tokens("(", "type", "regular", "contents", contents, ")").ToArray();
}
