using System.Collections.Concurrent;
using System.Reflection;
using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.Http.Tests;

/// <summary>
/// A Nix client asks for a path's narinfo, then for the NAR it names. The second request is answered without looking
/// the record up again (the kept narinfo answer vouches for it), but only for the view that answer was for, and only
/// while no path record has changed or gone since: what a view may read never widens through the shortcut.
/// </summary>
public sealed class NarAfterNarInfoTests : CacheFixture
{
    private readonly ConcurrentQueue<string> _calls = new();

    protected override async Task<KilnStore> OpenStoreAsync(StoreOptions options)
    {
        Directory.CreateDirectory(options.DataDirectory);
        var metadata = Recording.Wrap(new SqliteMetadataStore(Path.Combine(options.DataDirectory, "kiln.db")), _calls);
        return await KilnStore.OpenAsync(options, metadata, default);
    }

    [Fact]
    public async Task A_NAR_asked_for_after_its_narinfo_is_not_looked_up_again_and_one_asked_for_alone_is()
    {
        using var cache = await Store.OpenViewAsync("company-cache", default);
        await Store.Accounts.SetPublicCacheAsync(cache.AccountId, true, default);
        var first = await AddAsync(cache, "first");
        var second = await AddAsync(cache, "second");

        Assert.Equal(200, (await GetAsync($"/{first.Path.HashPart}.narinfo")).Status);
        _calls.Clear();
        var (status, body) = await GetAsync($"/nar/{first.NarHash.ToNix32()}.nar");
        Assert.Equal(200, status);
        Assert.Equal(first.NarSize, body.Length);
        Assert.DoesNotContain(nameof(IMetadataStore.FindNarAsync), _calls);

        // No narinfo asked for first: the lookup, as always.
        _calls.Clear();
        Assert.Equal(200, (await GetAsync($"/nar/{second.NarHash.ToNix32()}.nar")).Status);
        Assert.Contains(nameof(IMetadataStore.FindNarAsync), _calls);
    }

    [Fact]
    public async Task A_NAR_shown_to_one_view_is_not_readable_through_another_nor_after_its_record_is_gone()
    {
        using var cache = await Store.OpenViewAsync("company-cache", default);
        using var bob = await Store.OpenViewAsync("bob", default);
        await Store.Accounts.SetPublicCacheAsync(cache.AccountId, true, default);
        var shown = await AddAsync(cache, "shown");
        Assert.Equal(200, (await GetAsync($"/{shown.Path.HashPart}.narinfo")).Status); // anonymous: the public cache's view
        Assert.Equal(200, (await GetAsync($"/nar/{shown.NarHash.ToNix32()}.nar")).Status);

        // Bob's token reads Bob's account only: the anonymous view's answer does not vouch for him.
        var token = AccessToken.Generate();
        await Store.Accounts.AddTokenAsync(bob.AccountId, AccessToken.Hash(token), "", KeyPermissions.StoreRead, null, default);
        Assert.Equal(404, (await GetAsync($"/nar/{shown.NarHash.ToNix32()}.nar", token)).Status);

        // Bob uploads the same bytes under another name, so the blob stays when the public cache's record goes; after
        // that, the public cache's view no longer has the NAR, whatever it was shown before.
        var nar = NarOf("shown");
        var copy = new ValidPathInfo { Path = StorePath.FromHash(new byte[20], "bobs-copy"), NarHash = shown.NarHash, NarSize = nar.Length };
        await bob.AddToStoreAsync(copy, new MemoryStream(nar), false, false, default);
        await Store.Metadata.DeletePathsAsync(cache.AccountId, [shown.Path], default);
        Assert.Equal(404, (await GetAsync($"/nar/{shown.NarHash.ToNix32()}.nar")).Status);
        Assert.Equal(200, (await GetAsync($"/nar/{shown.NarHash.ToNix32()}.nar", token)).Status);
    }

    private static async Task<ValidPathInfo> AddAsync(StoreView view, string name)
    {
        var nar = NarOf(name);
        var info = new ValidPathInfo
        {
            Path = StorePath.FromHash(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(name)).AsSpan(0, 20), name),
            NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar),
            NarSize = nar.Length,
        };
        await view.AddToStoreAsync(info, new MemoryStream(nar), false, false, default);
        return info;
    }

    private static byte[] NarOf(string contents) =>
        NarBuilder.Start().Tokens("(", "type", "regular", "contents", contents + "\n", ")").ToArray();

    /// <summary>The metadata port, recording the name of every method called through it.</summary>
    public class Recording : DispatchProxy
    {
        private IMetadataStore _inner = null!;
        private ConcurrentQueue<string> _calls = null!;

        public static IMetadataStore Wrap(IMetadataStore inner, ConcurrentQueue<string> calls)
        {
            var wrapped = Create<IMetadataStore, Recording>();
            var proxy = (Recording)(object)wrapped;
            proxy._inner = inner;
            proxy._calls = calls;
            return wrapped;
        }

        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            ArgumentNullException.ThrowIfNull(targetMethod);
            _calls.Enqueue(targetMethod.Name);
            try
            {
                return targetMethod.Invoke(_inner, args);
            }
            catch (TargetInvocationException e) when (e.InnerException is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
                throw;
            }
        }
    }
}
