using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Http.Tests;

/// <summary>
/// Issue 19.3's log attack, through the real HTTP handler: Mallory registers a path under the name of Bob's
/// derivation (an input-addressed upload, whose name nothing checks) and runs a build of "it" with a log of her own.
/// When logs were files named by <c>.drv</c> path, her build overwrote Bob's log and her request read it. A log
/// belongs to a build now: each reads only their own, and Bob's is intact.
/// </summary>
public sealed class LogTheftTests : CacheFixture
{
    [Fact]
    public async Task Another_accounts_build_under_the_same_drv_path_neither_reads_nor_overwrites_its_log()
    {
        using var bob = await Store.OpenViewAsync("bob", default);
        var drvText = "Derive([(\"out\",\"/nix/store/00000000000000000000000000000000-secret\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[])";
        var drv = (await bob.AddContentAddressedAsync("secret.drv", ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
            new MemoryStream(Encoding.UTF8.GetBytes(drvText)), new SortedSet<StorePath>(), false, default)).Path;
        await BuildAsync(bob.AccountId, drv, "bob's secret: hunter2");

        // Mallory: the same name, her own bytes, her own build of it, later than Bob's.
        using var mallory = await Store.OpenViewAsync("mallory", default);
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
        var build = await Store.Builds.StartBuildAsync($"key-{account}", drv.BaseName, account, 1, default);
        using (var log = Store.Logs.Create(build))
        {
            log.AppendLine(line);
        }

        await Store.Builds.FinishBuildAsync(build, new BuildEnd(true, "", "", 2, null, null, null, []), default);
    }

    private async Task<string> TokenAsync(long account)
    {
        var token = AccessToken.Generate();
        await Store.Accounts.AddTokenAsync(account, AccessToken.Hash(token), "", KeyPermissions.StoreRead, null, default);
        return token;
    }

    private Task<(int Status, string Body)> GetLogAsync(StorePath drv, string? token) => GetAsync($"/log/{drv.BaseName}", token);
}
