using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Http.Tests;

/// <summary>
/// Issue 19.3's log attack, through the real HTTP handler: Mallory registers a path under the name of Bob's
/// derivation (an input-addressed upload, whose name nothing checks) and runs a build of "it" with a log of her own.
/// When logs were files named by <c>.drv</c> path, her build overwrote Bob's log and her request read it. A log
/// belongs to a build now: each reads only their own, and Bob's is intact.
/// </summary>
public sealed class LogTheftTests : IAsyncLifetime
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
    public async Task Another_accounts_build_under_the_same_drv_path_neither_reads_nor_overwrites_its_log()
    {
        using var bob = await _store.OpenViewAsync("bob", default);
        var drvText = "Derive([(\"out\",\"/nix/store/00000000000000000000000000000000-secret\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[])";
        var drv = (await bob.AddContentAddressedAsync("secret.drv", ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
            new MemoryStream(Encoding.UTF8.GetBytes(drvText)), new SortedSet<StorePath>(), false, default)).Path;
        await BuildAsync(bob.AccountId, drv, "bob's secret: hunter2");

        // Mallory: the same name, her own bytes, her own build of it, later than Bob's.
        using var mallory = await _store.OpenViewAsync("mallory", default);
        var nar = NarBuilder.Start().Tokens("(", "type", "regular", "contents", "not a derivation\n", ")").ToArray();
        await mallory.AddToStoreAsync(new ValidPathInfo { Path = drv, NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar), NarSize = nar.Length },
            new MemoryStream(nar), false, true, default);
        await BuildAsync(mallory.AccountId, drv, "mallory's fake log");

        var bobs = await GetLogAsync(drv, await TokenAsync(bob.AccountId));
        Assert.Equal((200, "bob's secret: hunter2\n"), bobs);
        var hers = await GetLogAsync(drv, await TokenAsync(mallory.AccountId));
        Assert.Equal((200, "mallory's fake log\n"), hers);
        Assert.Equal(404, (await GetLogAsync(drv, token: null)).Status);
    }

    private async Task BuildAsync(long account, StorePath drv, string line)
    {
        var build = await _store.Builds.StartBuildAsync($"key-{account}", drv.BaseName, account, 1, default);
        using (var log = _store.Logs.Create(build))
        {
            log.AppendLine(line);
        }

        await _store.Builds.FinishBuildAsync(build, new BuildEnd(true, "", "", 2, null, null, null, []), default);
    }

    private async Task<string> TokenAsync(long account)
    {
        var token = AccessToken.Generate();
        await _store.Accounts.AddTokenAsync(account, AccessToken.Hash(token), "", KeyPermissions.StoreRead, null, default);
        return token;
    }

    private async Task<(int Status, string Body)> GetLogAsync(StorePath drv, string? token)
    {
        var context = new DefaultHttpContext();
        context.Request.Method = "GET";
        context.Request.Path = $"/log/{drv.BaseName}";
        if (token is not null)
        {
            context.Request.Headers.Authorization = $"Bearer {token}";
        }

        var body = new MemoryStream();
        context.Response.Body = body;
        await _cache.HandleAsync(context);
        return (context.Response.StatusCode, Encoding.UTF8.GetString(body.ToArray()));
    }
}
