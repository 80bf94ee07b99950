using System.Net;
using Kiln.Nix.Compression;
using Kiln.Nix.Hashing;
using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol;
using Kiln.Push;
using Kiln.Store.Metadata;
using Kiln.Store.Push;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Store.Tests;

/// <summary>
/// Pushes to accounts' caches, run by the push runner against a real store: the cache a push writes (Nix's layout,
/// signed, compressed; read back here, and by real Nix in the end-to-end tests), what it skips, and the operator's
/// rules (file roots, public addresses) with their failures and retries.
/// </summary>
public sealed class PushTests(S3Server server) : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private KilnStore _store = null!;

    private static readonly byte[] HelloNar = StoreTests.HelloNar, TreeNar = StoreTests.TreeNar;
    private static readonly StorePath Hello = StoreTests.Hello, Tree = MetadataContract.P("tree");

    public async ValueTask InitializeAsync() =>
        _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"] }, default);

    public async ValueTask DisposeAsync()
    {
        await _store.DisposeAsync();
        _temp.Dispose();
    }

    // An account holding hello and a tree that refers to it, with a signing key (or none).
    private async Task<(long Account, SecretKey? Key)> AccountAsync(string name, bool signingKey = true)
    {
        using var view = await _store.OpenViewAsync(name, default);
        await view.AddToStoreAsync(StoreTests.Declared(Hello, HelloNar), new MemoryStream(HelloNar), false, true, default);
        await view.AddToStoreAsync(StoreTests.Declared(Tree, TreeNar, Hello), new MemoryStream(TreeNar), false, true, default);
        var key = signingKey ? SecretKey.Generate(name + "-1") : null;
        if (key is not null)
        {
            await _store.Settings.SetSigningKeyAsync(view.AccountId, key.ToString(), default);
        }

        return (view.AccountId, key);
    }

    // Runs pushes until none of the accounts' is queued (or a while has passed): one account's run one at a time.
    private async Task RunAllAsync(PushRunner runner, params long[] accounts)
    {
        for (var round = 0; round < 100; round++)
        {
            var queued = false;
            foreach (var account in accounts)
            {
                queued |= (await _store.Pushes.GetPushesAsync(account, 0, 100, default)).Any(p => p.State == PushState.Queued);
            }

            if (!queued)
            {
                return;
            }

            if (await runner.RunDueAsync(default) == 0)
            {
                await Task.Delay(100);
            }
        }
    }

    private PushRunner Runner(PushOptions? options = null) =>
        new(_store, (options ?? new PushOptions()) with { TemporaryDirectory = _temp["tmp"] }, NullLogger.Instance);

    private async Task<PushRecord> RecordAsync(long account, long id) => (await _store.Pushes.GetPushesAsync(account, 0, 100, default)).Single(p => p.Id == id);

    [Theory]
    [InlineData("none")]
    [InlineData("xz")]
    [InlineData("zstd")]
    public async Task A_push_writes_a_signed_binary_cache_references_first_and_uploads_only_what_is_missing(string compression)
    {
        var (alice, key) = await AccountAsync("alice");
        var root = _temp["caches"];
        var target = $"file://{root}/alice?compression={compression}";
        var id = await _store.Pushes.AddPushAsync(alice, 1, target, [Tree.BaseName], default);
        using var runner = Runner(new PushOptions { FileRoots = [root] });
        Assert.Equal(1, await runner.RunDueAsync(default));

        var record = await RecordAsync(alice, id);
        Assert.Equal((PushState.Done, 2L, 1, ""), (record.State, record.Uploaded, record.Attempts, record.Error));
        var cache = Path.Combine(root, "alice");
        Assert.Equal("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 50\n", File.ReadAllText(Path.Combine(cache, "nix-cache-info")));
        foreach (var (path, nar) in new[] { (Hello, HelloNar), (Tree, TreeNar) })
        {
            var info = NarInfo.Parse(File.ReadAllText(Path.Combine(cache, path.HashPart + ".narinfo")));
            Assert.True(info.IsSignedByAny([key!.PublicKey]));
            Assert.Equal((path, compression, nar.Length), (info.StorePath, info.Compression, (int)info.NarSize));
            var file = File.ReadAllBytes(Path.Combine(cache, info.Url));
            Assert.Equal((info.FileHash, info.FileSize), (NixHash.Compute(NixHashAlgorithm.Sha256, file), file.Length));
            await using var decompressed = Decompression.Open(compression, new MemoryStream(file));
            var bytes = new MemoryStream();
            await decompressed.CopyToAsync(bytes);
            Assert.Equal(nar, bytes.ToArray());
        }

        Assert.Equal([Hello], NarInfo.Parse(File.ReadAllText(Path.Combine(cache, Tree.HashPart + ".narinfo"))).References);
        Assert.Empty(Directory.Exists(_temp["tmp"]) ? Directory.GetFiles(_temp["tmp"]) : []);
        Assert.Empty(Directory.GetFiles(cache, "*.part", SearchOption.AllDirectories));

        // Again (a reused build, another output of the closure): nothing is uploaded twice.
        var again = await _store.Pushes.AddPushAsync(alice, 2, target, [Tree.BaseName, Hello.BaseName], default);
        Assert.Equal(1, await runner.RunDueAsync(default));
        Assert.Equal((PushState.Done, 0L), ((await RecordAsync(alice, again)).State, (await RecordAsync(alice, again)).Uploaded));
    }

    [Fact]
    public async Task What_a_target_was_seen_to_have_is_not_asked_again_for_a_while_and_never_for_another_account()
    {
        var (alice, key) = await AccountAsync("alice");
        var (bob, bobKey) = await AccountAsync("bob");
        var cache = Path.Combine(_temp["caches"], "shared");
        var target = PushTarget.Parse($"file://{cache}?compression=none");
        var pusher = new ClosurePusher(_temp["tmp"]);
        using var writer = new CountingWriter(new FileCacheWriter(cache));
        using var aliceView = _store.OpenView(KilnStore.ReaderFor(alice));
        using var bobView = _store.OpenView(KilnStore.ReaderFor(bob));

        Assert.Equal(2, await pusher.PushAsync(aliceView, [Tree], writer, target, key!, default));
        var asked = writer.Questions;
        Assert.Equal(0, await pusher.PushAsync(aliceView, [Tree], writer, target, key!, default));
        Assert.Equal(asked, writer.Questions); // alice's second push asked nothing
        Assert.Equal(0, await pusher.PushAsync(bobView, [Tree], writer, target, bobKey!, default));
        Assert.Equal(asked + 2, writer.Questions); // bob's asked the cache itself
    }

    // A cache writer that counts the questions asked of it.
    private sealed class CountingWriter(ICacheWriter inner) : ICacheWriter
    {
        private int _questions;

        public int Questions => _questions;

        public Task<bool> ExistsAsync(string file, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _questions);
            return inner.ExistsAsync(file, cancellationToken);
        }

        public Task PutAsync(string file, Stream content, long length, string contentType, CancellationToken cancellationToken) =>
            inner.PutAsync(file, content, length, contentType, cancellationToken);

        public void Dispose() => inner.Dispose();
    }

    [Fact]
    public async Task Pushes_go_only_where_the_operator_allows_and_failures_are_retried_then_given_up_with_their_reasons()
    {
        var (alice, _) = await AccountAsync("alice");
        var (bob, _) = await AccountAsync("bob", signingKey: false);
        var root = _temp["caches"];
        var outside = Directory.CreateDirectory(_temp["elsewhere"]).FullName;
        // A tenant naming a directory outside the operator's roots (by a path that only starts like one, too).
        var notUnder = await _store.Pushes.AddPushAsync(alice, 1, $"file://{outside}", [Tree.BaseName], default);
        var prefixOnly = await _store.Pushes.AddPushAsync(alice, 1, $"file://{root}-evil/alice", [Tree.BaseName], default);
        // Nor another account's directory of a root (it would pre-seed or block that account's cache), nor the root itself.
        var bobsCache = await _store.Pushes.AddPushAsync(alice, 1, $"file://{root}/bob", [Tree.BaseName], default);
        var theRoot = await _store.Pushes.AddPushAsync(alice, 1, $"file://{root}", [Tree.BaseName], default);
        // The server's own network (loopback here) is not a push target unless the operator says so.
        var loopback = await _store.Pushes.AddPushAsync(alice, 1, "http://127.0.0.1:9/cache", [Tree.BaseName], default);
        var noKey = await _store.Pushes.AddPushAsync(bob, 1, $"file://{root}/bob", [Tree.BaseName], default);
        var noCredentials = await _store.Pushes.AddPushAsync(alice, 1, "s3://bucket/prefix?endpoint=https://s3.example.org", [Tree.BaseName], default);
        var gone = await _store.Pushes.AddPushAsync(bob, 1, $"file://{root}/bob", [MetadataContract.P("never-there").BaseName], default);
        await _store.Settings.SetSigningKeyAsync(bob, SecretKey.Generate("bob-1").ToString(), default);

        using var runner = Runner(new PushOptions { FileRoots = [root], RetryBase = TimeSpan.Zero, MaxAttempts = 2 });
        await RunAllAsync(runner, alice, bob);

        Assert.Empty(Directory.GetFileSystemEntries(outside));
        Assert.False(Directory.Exists(root + "-evil"));
        Assert.False(File.Exists(Path.Combine(root, "nix-cache-info")));
        foreach (var id in new[] { notUnder, prefixOnly, bobsCache, theRoot })
        {
            var refused = await RecordAsync(alice, id);
            Assert.Equal((PushState.Failed, 1), (refused.State, refused.Attempts));
            Assert.Contains("--push-file-root", refused.Error, StringComparison.Ordinal);
        }

        var unreachable = await RecordAsync(alice, loopback);
        Assert.Equal((PushState.Failed, 2), (unreachable.State, unreachable.Attempts)); // retried, then given up
        Assert.Contains("not a public address", unreachable.Error, StringComparison.Ordinal);
        var s3 = await RecordAsync(alice, noCredentials);
        Assert.Equal(PushState.Failed, s3.State);
        Assert.Contains("no credentials for 's3.example.org'", s3.Error, StringComparison.Ordinal);
        // Bob got a key only after the push was queued; his first push ran with it (the key is read when it runs).
        Assert.Equal(PushState.Done, (await RecordAsync(bob, noKey)).State);
        var missing = await RecordAsync(bob, gone);
        Assert.Equal(PushState.Failed, missing.State);
        Assert.Contains("no longer in the account's store", missing.Error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_s3_push_uses_the_accounts_netrc_credentials_and_a_private_endpoint_only_where_the_operator_allows()
    {
        var bucket = server.CreateBucket();
        var (alice, key) = await AccountAsync("alice");
        await _store.Settings.SetUpstreamSettingsAsync(alice, null, null, $"machine 127.0.0.1 login {S3Server.AccessKey} password {S3Server.SecretKey}", default);
        var target = $"s3://{bucket}/cache?endpoint={Uri.EscapeDataString(server.Endpoint)}&region=us-east-1&compression=xz";
        var id = await _store.Pushes.AddPushAsync(alice, 1, target, [Tree.BaseName], default);
        using (var guarded = Runner(new PushOptions { RetryBase = TimeSpan.Zero, MaxAttempts = 1 }))
        {
            await guarded.RunDueAsync(default);
        }

        Assert.Contains("not a public address", (await RecordAsync(alice, id)).Error, StringComparison.Ordinal);
        id = await _store.Pushes.AddPushAsync(alice, 1, target, [Tree.BaseName], default);
        using (var allowed = Runner(new PushOptions { AllowPrivateAddresses = true }))
        {
            await allowed.RunDueAsync(default);
        }

        Assert.Equal((PushState.Done, 2L), ((await RecordAsync(alice, id)).State, (await RecordAsync(alice, id)).Uploaded));
        using var s3 = Blobs.S3BlobLocation.Parse($"s3://{bucket}/?endpoint={Uri.EscapeDataString(server.Endpoint)}&credentials_file={Uri.EscapeDataString(server.CredentialsFile)}").CreateClient();
        using var narInfo = await s3.GetObjectAsync(bucket, $"cache/{Tree.HashPart}.narinfo");
        var text = await new StreamReader(narInfo.ResponseStream).ReadToEndAsync();
        var info = NarInfo.Parse(text);
        Assert.True(info.IsSignedByAny([key!.PublicKey]));
        Assert.Equal(("xz", "text/x-nix-narinfo"), (info.Compression, narInfo.Headers.ContentType));
        using var nar = await s3.GetObjectAsync(bucket, "cache/" + info.Url);
        await using var decompressed = Decompression.Open("xz", nar.ResponseStream);
        var bytes = new MemoryStream();
        await decompressed.CopyToAsync(bytes);
        Assert.Equal(TreeNar, bytes.ToArray());
    }

    [Fact]
    public async Task An_account_without_a_signing_key_is_told_to_make_one()
    {
        var (carol, _) = await AccountAsync("carol", signingKey: false);
        var root = _temp["caches"];
        var id = await _store.Pushes.AddPushAsync(carol, 1, $"file://{root}/carol", [Tree.BaseName], default);
        using var runner = Runner(new PushOptions { FileRoots = [root] });
        await runner.RunDueAsync(default);
        var record = await RecordAsync(carol, id);
        Assert.Equal(PushState.Failed, record.State);
        Assert.Contains("no signing key", record.Error, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(root, "carol")));
    }

    [Theory]
    [InlineData("file:///srv/cache", "file:///srv/cache", "xz")]
    [InlineData("file:///srv/cache/../other/", "file:///srv/other", "xz")] // (the operator's roots are checked against this)
    [InlineData("https://cache.example.org/team/?compression=zstd&compression-level=19", "https://cache.example.org/team", "zstd")]
    [InlineData("s3://bucket/nix?region=eu-west-1&compression=none", "s3://bucket/nix?region=eu-west-1", "none")]
    [InlineData("ssh-ng://root@builder.example.org:2222?base64-ssh-public-host-key=c3NoLWVkMjU1MTkgQUFBQQ==", "ssh-ng://root@builder.example.org:2222", "none")]
    public void Targets_parse_with_Nixs_store_parameters(string text, string shown, string compression)
    {
        var target = PushTarget.Parse(text);
        Assert.Equal((shown, compression), (target.ToString(), target.Compression));
    }

    [Theory]
    [InlineData("https://user:secret@cache.example.org", "carries credentials")]
    [InlineData("ssh-ng://builder@host", "needs base64-ssh-public-host-key")]
    [InlineData("ssh://builder@host", "ssh:// store")]
    [InlineData("ssh-ng://builder@host?base64-ssh-public-host-key=bm90IGEga2V5", "not a host's public key")]
    [InlineData("ssh-ng://builder:secret@host?base64-ssh-public-host-key=c3NoLWVkMjU1MTkgQUFBQQ==", "carries credentials")]
    [InlineData("s3://bucket?endpoint=https://AKIA:secret@minio.example.org", "endpoint carrying credentials")]
    [InlineData("s3://bucket?endpoint=https://s3.x.evilamazonaws.com", "looks like AWS")]
    [InlineData("https://cache.example.org?compression=xz&compression-level=9", "xz level 9")]
    [InlineData("ftp://host/x", "not a file://")]
    [InlineData("file://relative/dir", "absolute directory")]
    [InlineData("https://cache.example.org?compression=bzip2", "compression 'bzip2'")]
    [InlineData("https://cache.example.org?compression=xz&compression-level=12", "xz level 12")]
    [InlineData("https://cache.example.org?secret-key=/etc/shadow", "parameter 'secret-key'")]
    [InlineData("s3://bucket?credentials_file=/root/.aws/credentials", "parameter 'credentials_file'")]
    [InlineData("s3://bucket?profile=operator", "parameter 'profile'")]
    public void Targets_Kiln_cannot_or_must_not_push_to_are_refused(string text, string why)
    {
        var e = Assert.Throws<KilnException>(() => PushTarget.Parse(text));
        Assert.Contains(why, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("secret", e.Message.Replace("secret-key", "", StringComparison.Ordinal), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("1.1.1.1", true)]
    [InlineData("2606:4700::1111", true)]
    [InlineData("127.0.0.1", false)]
    [InlineData("10.1.2.3", false)]
    [InlineData("172.20.0.1", false)]
    [InlineData("192.168.1.1", false)]
    [InlineData("169.254.169.254", false)]
    [InlineData("100.64.0.1", false)]
    [InlineData("0.0.0.0", false)]
    [InlineData("::1", false)]
    [InlineData("::ffff:127.0.0.1", false)]
    [InlineData("fe80::1", false)]
    [InlineData("fd00::1", false)]
    [InlineData("64:ff9b::a00:5", false)] // NAT64 of 10.0.0.5
    [InlineData("64:ff9b::101:101", true)] // NAT64 of 1.1.1.1
    [InlineData("64:ff9b:1::1", false)]
    [InlineData("2002:a9fe:a9fe::1", false)] // 6to4 of 169.254.169.254
    [InlineData("::ffff:0:a00:1", false)]
    public void Only_public_addresses_are_push_targets_by_default(string address, bool isPublic) =>
        Assert.Equal(isPublic, GuardedConnections.IsPublic(IPAddress.Parse(address)));
}
