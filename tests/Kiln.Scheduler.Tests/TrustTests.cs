using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;
using Kiln.Scheduler.Queue;
using Kiln.Store;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// Trust is per account and never mixed into the global level: Kiln's build key (the one every tenant is told to
/// trust) signs only what was built from globally trusted inputs; what an account's own keys vouch for counts for that
/// account alone. The upstream cache is a real HTTP server serving what an attacker would.
/// </summary>
public sealed class TrustTests : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private readonly FileServer _cache = new();
    private readonly SecretKey _operatorKey = SecretKey.Generate("operator-cache-1");
    private readonly SecretKey _buildKey = SecretKey.Generate("kiln-build-1");
    private TestDerivations _derivations = null!;
    private KilnStore _store = null!;
    private InMemoryJobQueue _queue = null!;
    private EmbeddedAgent _agent = null!;
    private BuildScheduler _scheduler = null!;

    public async ValueTask InitializeAsync()
    {
        _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"], DefaultTrustedPublicKeys = [_operatorKey.PublicKey.ToString()] }, default);
        _derivations = new TestDerivations(_store);
        var executor = new RecordingExecutor(new LocalAgentStore(_store.Blobs), slots: 2);
        _queue = new InMemoryJobQueue();
        _agent = new EmbeddedAgent(_queue, executor, new AgentInfo("test", new SortedSet<string> { "x86_64-linux" }, new SortedSet<string>(), 2), NullLogger.Instance,
            TimeSpan.FromSeconds(1));
        _scheduler = new BuildScheduler(_store.Builds, _store.Blobs, _queue, _store.Logs, new SchedulerOptions(), _buildKey, NullLogger.Instance);
    }

    public async ValueTask DisposeAsync()
    {
        await _agent.DisposeAsync();
        _queue.Dispose();
        await _cache.DisposeAsync();
        await _store.DisposeAsync();
        _temp.Dispose();
    }

    private Task<StorePath> DerivationAsync(string account, string name, params StorePath[] inputs) => _derivations.WriteAsync(account, name, inputs);

    private StorePath Out(StorePath drv) => _derivations[drv].Outputs["out"].StorePath!.Value;

    // The cache serves `path` with any contents the attacker likes, signed by `key`.
    private void Serve(StorePath path, string contents, SecretKey key)
    {
        var nar = Nar.OfFile(Encoding.UTF8.GetBytes(contents));
        var narHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar);
        var info = new NarInfo { StorePath = path, Url = $"nar/{narHash.ToNix32()}.nar", Compression = "none", NarHash = narHash, NarSize = nar.Length }.WithSignature(key);
        _cache.Files[$"{path.HashPart}.narinfo"] = Encoding.UTF8.GetBytes(info.ToString());
        _cache.Files[$"nar/{narHash.ToNix32()}.nar"] = nar;
    }

    private async Task<PathRecord> BuildAsync(string account, StorePath drv)
    {
        using var view = await _store.OpenViewAsync(account, default);
        var results = await _scheduler.ForSession(view).BuildPathsAsync([new DerivedPath.Built(drv, null)], new ClientBuildSettings(), new Events(), default);
        Assert.True(results.Single().Status is BuildStatus.Built, results.Single().ErrorMessage);
        return (await view.GetRecordsAsync([Out(drv)], default))[Out(drv)];
    }

    private static bool SignedBy(PathRecord record, SecretKey key) =>
        record.Info.Signatures.Any(s => key.PublicKey.Verify(NarInfo.ComputeFingerprint(record.Info.Path, record.Info.NarHash, record.Info.NarSize, record.Info.References), s));

    private async Task<SecretKey> AccountAsync(string account, SecretKey trusts)
    {
        using var view = await _store.OpenViewAsync(account, default);
        await _store.Settings.SetUpstreamSettingsAsync(view.AccountId, _cache.Url, trusts.PublicKey.ToString(), null, default);
        var own = SecretKey.Generate($"{account}-1");
        await _store.Settings.SetSigningKeyAsync(view.AccountId, own.ToString(), default);
        return own;
    }

    [Fact]
    public async Task What_only_an_account_trusts_never_gets_Kilns_build_key()
    {
        // The attack (19.1, on 8b92d5f): Alice trusts her own cache key, serves a fake glibc at the real glibc path,
        // and builds the real hello on top: hello's output, at its real path, came out signed by Kiln's build key.
        var alicesKey = SecretKey.Generate("alice-cache-1");
        var aliceSigns = await AccountAsync("alice", trusts: alicesKey);
        var glibc = await DerivationAsync("alice", "glibc");
        var hello = await DerivationAsync("alice", "hello", glibc);
        Serve(Out(glibc), "a poisoned glibc", alicesKey);

        var built = await BuildAsync("alice", hello);
        Assert.False(SignedBy(built, _buildKey), "Kiln's build key signed an output of inputs only Alice trusts");
        Assert.Equal(PathTrust.BuiltByAccountTrust, built.Trust);
        Assert.True(SignedBy(built, aliceSigns)); // her own key may vouch for it: she trusts its inputs
        using (var alice = await _store.OpenViewAsync("alice", default))
        {
            Assert.Equal(PathTrust.SignedByAccountKey, (await alice.GetRecordsAsync([Out(glibc)], default))[Out(glibc)].Trust);
        }

        // The same, vouched for by a key the operator trusts: globally trusted, signed by Kiln's build key.
        var bobSigns = await AccountAsync("bob", trusts: SecretKey.Generate("bob-cache-1"));
        var glibc2 = await DerivationAsync("bob", "glibc2");
        var hello2 = await DerivationAsync("bob", "hello2", glibc2);
        Serve(Out(glibc2), "the operator's glibc", _operatorKey);
        var trusted = await BuildAsync("bob", hello2);
        Assert.True(SignedBy(trusted, _buildKey));
        Assert.True(SignedBy(trusted, bobSigns));
        Assert.Equal(PathTrust.Built, trusted.Trust);
    }

    [Fact]
    public async Task An_account_key_does_not_sign_what_was_built_from_inputs_nobody_vouches_for()
    {
        // 19.5: an output built from an uploaded (untrusted) input is the uploader's claim, not Kiln's: no account key.
        var carolSigns = await AccountAsync("carol", trusts: SecretKey.Generate("carol-cache-1"));
        var dep = await DerivationAsync("carol", "dep");
        var top = await DerivationAsync("carol", "top", dep);
        using (var carol = await _store.OpenViewAsync("carol", default))
        {
            var nar = Nar.OfFile("uploaded by carol\n"u8.ToArray());
            await carol.AddToStoreAsync(new Kiln.Nix.Store.ValidPathInfo { Path = Out(dep), NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar), NarSize = nar.Length },
                new MemoryStream(nar), false, true, default);
        }

        var built = await BuildAsync("carol", top);
        Assert.Equal(PathTrust.Untrusted, built.Trust);
        Assert.False(SignedBy(built, _buildKey));
        Assert.False(SignedBy(built, carolSigns));
    }
}
