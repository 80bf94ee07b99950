using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol;
using Kiln.Protocol.Worker;
using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

/// <summary>The store as sessions use it: verified uploads, deduplicated content, private views, GC, the unpacked tree.</summary>
public sealed class StoreTests : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private KilnStore _store = null!;

    internal static readonly byte[] HelloNar = File.ReadAllBytes(Repo.Golden("nar", "hello.txt.nar"));
    internal static readonly byte[] TreeNar = File.ReadAllBytes(Repo.Golden("nar", "t8.nar"));
    internal static readonly StorePath Hello = StorePath.Parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt");

    public async ValueTask InitializeAsync() =>
        _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"], MaterialisedAccount = "local" }, default);

    public async ValueTask DisposeAsync()
    {
        await _store.DisposeAsync();
        _temp.Dispose();
    }

    internal static ValidPathInfo Declared(StorePath path, byte[] nar, params StorePath[] references) => new()
    {
        Path = path,
        NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar),
        NarSize = nar.Length,
        References = new SortedSet<StorePath>(references),
    };

    private static StorePath Ia(string name) => MetadataContract.P(name);

    private string[] TempFiles() => Directory.GetFiles(Path.Combine(_temp["data"], "blobs", "tmp"));

    private string[] Blobs() => Directory.GetFiles(Path.Combine(_temp["data"], "blobs"), "*.nar", SearchOption.AllDirectories);

    [Fact]
    public async Task An_upload_is_verified_then_registered_and_unpacked()
    {
        using var view = await _store.OpenViewAsync("local", default);
        var path = Ia("tree");
        await view.AddToStoreAsync(Declared(path, TreeNar), new MemoryStream(TreeNar), false, true, default);
        var info = (await view.QueryPathInfosAsync([path], default))[path];
        Assert.Equal(TreeNar.Length, info.NarSize);
        Assert.Single(Blobs());
        Assert.Empty(TempFiles());

        // The socket account's view is a real store tree, read-only with mtime 1, as Nix keeps its store.
        var unpacked = Path.Combine(_temp["data"], "root", "nix", "store", path.BaseName);
        Assert.Equal(TreeNar, NarBytes(unpacked));
        var file = new FileInfo(Path.Combine(unpacked, "a.txt"));
        Assert.Equal(Convert.ToInt32("444", 8), (int)file.UnixFileMode);
        Assert.Equal(DateTimeOffset.FromUnixTimeSeconds(1).UtcDateTime, file.LastWriteTimeUtc);
        Assert.Equal(Convert.ToInt32("555", 8), (int)new FileInfo(Path.Combine(unpacked, "sub", "run.sh")).UnixFileMode);
        Assert.Equal(Convert.ToInt32("555", 8), (int)new DirectoryInfo(unpacked).UnixFileMode);
    }

    [Fact]
    public async Task A_repair_upload_changes_no_one_elses_content_and_not_even_the_uploaders_record()
    {
        // Bob holds a path; Mallory "repairs" the same name with other bytes, and repairs her own earlier copy of
        // another path the same way. Repair re-sends a path, it does not rewrite what anyone registered: Nix refuses
        // it from untrusted clients outright; in Kiln records are per account and never replaced by an upload, so
        // Bob's record and bytes are unchanged, and so is her own earlier record.
        var shared = Ia("shared");
        using (var bob = await _store.OpenViewAsync("bob", default))
        {
            await bob.AddToStoreAsync(Declared(shared, TreeNar), new MemoryStream(TreeNar), false, true, default);
        }

        var own = Ia("mallorys");
        using (var mallory = await _store.OpenViewAsync("mallory", default))
        {
            await mallory.AddToStoreAsync(Declared(own, TreeNar), new MemoryStream(TreeNar), false, true, default);
            await mallory.AddToStoreAsync(Declared(shared, HelloNar), new MemoryStream(HelloNar), repair: true, checkSignatures: false, default);
            await mallory.AddToStoreAsync(Declared(own, HelloNar), new MemoryStream(HelloNar), repair: true, checkSignatures: false, default);
            Assert.Equal(NixHash.Compute(NixHashAlgorithm.Sha256, TreeNar), (await mallory.QueryPathInfosAsync([own], default))[own].NarHash);
        }

        using var again = await _store.OpenViewAsync("bob", default);
        Assert.Equal(NixHash.Compute(NixHashAlgorithm.Sha256, TreeNar), (await again.QueryPathInfosAsync([shared], default))[shared].NarHash);
        await using var nar = await again.OpenNarAsync(shared, default);
        Assert.NotNull(nar);
        using var read = new MemoryStream();
        await nar.Content.CopyToAsync(read);
        Assert.Equal(TreeNar, read.ToArray());
        Assert.Empty(await again.QueryValidPathsAsync([own], default));
    }

    private static byte[] NarBytes(string path)
    {
        using var output = new MemoryStream();
        Kiln.Nix.Nar.NarDumper.Dump(path, output);
        return output.ToArray();
    }

    [Theory]
    [InlineData("hash")]
    [InlineData("size")]
    [InlineData("malformed")]
    [InlineData("ca-path")]
    [InlineData("ca-hash")]
    [InlineData("reference")]
    [InlineData("ca-executable")]
    public async Task A_bad_upload_leaves_nothing_behind(string defect)
    {
        using var view = await _store.OpenViewAsync("local", default);
        var nar = HelloNar.ToArray();
        var info = Declared(Ia("x"), nar);
        switch (defect)
        {
            case "hash":
                nar[^20] ^= 1;
                break;
            case "size":
                info = info with { NarSize = info.NarSize + 8 };
                break;
            case "malformed":
                nar[20] ^= 1;
                info = Declared(info.Path, nar);
                break;
            case "ca-path":
                info = info with { ContentAddress = ContentAddress.Parse("fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw") };
                break;
            case "ca-hash":
                // The right path for a flat sha256 of other contents: the path checks out, the content does not.
                var ca = new ContentAddress(ContentAddressMethod.Flat, NixHash.Compute(NixHashAlgorithm.Sha256, "not hello\n"));
                info = info with { Path = StorePathComputer.MakeFixedOutputPath("hello.txt", ca), ContentAddress = ca };
                break;
            case "reference":
                info = info with { References = new SortedSet<StorePath> { Ia("absent") } };
                break;
            case "ca-executable":
                // The right flat path for the bytes, but the file is executable: a second NAR under one trusted name.
                nar = NarBuilder.Start().Tokens("(", "type", "regular", "executable", "", "contents", "hello\n", ")").ToArray();
                var flat = new ContentAddress(ContentAddressMethod.Flat, NixHash.Compute(NixHashAlgorithm.Sha256, "hello\n"));
                info = Declared(StorePathComputer.MakeFixedOutputPath("hello.txt", flat), nar) with { ContentAddress = flat };
                break;
        }

        var refused = await Assert.ThrowsAsync<KilnException>(() => view.AddToStoreAsync(info, new MemoryStream(nar), false, true, default));
        Assert.Equal(ErrorKind.Invalid, refused.Kind);
        Assert.True(defect != "ca-executable" || refused.Message.Contains("needs a non-executable regular file", StringComparison.Ordinal), refused.Message);
        Assert.Empty(await view.QueryAllValidPathsAsync(default));
        Assert.Empty(TempFiles());
        if (defect != "reference")
        {
            Assert.Empty(Blobs());
        }
    }

    [Fact]
    public async Task An_interrupted_upload_leaves_nothing_behind()
    {
        using var view = await _store.OpenViewAsync("local", default);
        var big = new byte[5 << 20];
        var nar = new NarBuilder().Str("nix-archive-1").File(System.Text.Encoding.Latin1.GetString(big)).ToArray();
        var broken = new BreakingStream(nar, breakAt: 3 << 20);
        await Assert.ThrowsAsync<IOException>(() => view.AddToStoreAsync(Declared(Ia("big"), nar), broken, false, true, default));
        Assert.Empty(await view.QueryAllValidPathsAsync(default));
        Assert.Empty(TempFiles());
        Assert.Empty(Blobs());
    }

    [Fact]
    public async Task Content_is_stored_once_and_views_stay_private()
    {
        using var alice = await _store.OpenViewAsync("alice", default);
        using var bob = await _store.OpenViewAsync("bob", default);
        var private1 = Ia("alice-private");
        await alice.AddToStoreAsync(Declared(private1, HelloNar), new MemoryStream(HelloNar), false, true, default);
        var shared = Ia("bob-copy");
        await bob.AddToStoreAsync(Declared(shared, HelloNar), new MemoryStream(HelloNar), false, true, default);
        Assert.Single(Blobs());

        // Knowing Alice's path gives Bob nothing.
        Assert.Empty(await bob.QueryValidPathsAsync([private1], default));
        Assert.Null(await bob.OpenNarAsync(private1, default));
        Assert.Null(await bob.QueryPathFromHashPartAsync(private1.HashPart, default));
        Assert.NotNull(await alice.OpenNarAsync(private1, default));
    }

    [Fact]
    public async Task The_same_path_uploaded_by_twenty_sessions_at_once_is_stored_once()
    {
        var path = Ia("popular");
        var uploads = Enumerable.Range(0, 20).Select(async _ =>
        {
            using var view = await _store.OpenViewAsync("local", default);
            await view.AddToStoreAsync(Declared(path, TreeNar), new MemoryStream(TreeNar), false, true, default);
        });
        await Task.WhenAll(uploads);
        using var check = await _store.OpenViewAsync("local", default);
        Assert.Equal([path], await check.QueryAllValidPathsAsync(default));
        Assert.Single(Blobs());
        Assert.Empty(TempFiles());
    }

    [Fact]
    public async Task Content_addressed_adds_compute_the_paths_nix_computes()
    {
        using var view = await _store.OpenViewAsync("local", default);
        var source = await view.AddContentAddressedAsync("hello.txt", ContentAddressMethodAndAlgorithm.ParseCamString("fixed:r:sha256"),
            new MemoryStream(HelloNar), new SortedSet<StorePath>(), false, default);
        Assert.Equal(Hello, source.Path);
        var flat = await view.AddContentAddressedAsync("hello.txt", ContentAddressMethodAndAlgorithm.ParseCamString("fixed:sha256"),
            new MemoryStream("hello\n"u8.ToArray()), new SortedSet<StorePath>(), false, default);
        Assert.Equal("/nix/store/gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt", flat.Path.FullPath);
        var text = await view.AddContentAddressedAsync("script.sh", ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
            new MemoryStream(System.Text.Encoding.UTF8.GetBytes($"cat {Hello}\n")), new SortedSet<StorePath> { Hello }, false, default);
        Assert.Equal("/nix/store/bzj23iw9rh8fbiagnrf8q351npvrdlbi-script.sh", text.Path.FullPath);
        Assert.Equal([Hello], (await view.QueryPathInfosAsync([text.Path], default))[text.Path].References);
        Assert.Contains(text.Path, await view.QueryReferrersAsync(Hello, default));
    }

    [Theory]
    [InlineData(1000)] // answered from memory when known
    [InlineData(5 << 20)] // larger than what is read into memory first: streamed on
    [InlineData(Kiln.Store.Blobs.NarIngest.FlatInMemory)] // the most a flat upload keeps in memory
    [InlineData(Kiln.Store.Blobs.NarIngest.FlatInMemory + 8)] // spooled to a file from there on, what was in memory first
    public async Task Adding_a_known_content_addressed_path_again_returns_it_and_stores_nothing_new(int size)
    {
        var contents = new byte[size];
        new Random(size).NextBytes(contents);
        var method = ContentAddressMethodAndAlgorithm.ParseCamString("fixed:sha256");
        var expected = StorePathComputer.MakeFixedOutputPath("blob.bin",
            new ContentAddress(ContentAddressMethod.Flat, Kiln.Nix.Hashing.NixHash.Compute(Kiln.Nix.Hashing.NixHashAlgorithm.Sha256, contents)));
        using var view = await _store.OpenViewAsync("local", default);
        var first = await view.AddContentAddressedAsync("blob.bin", method, new MemoryStream(contents), new SortedSet<StorePath>(), false, default);
        Assert.Equal(expected, first.Path);
        Assert.Equal(size + 112, first.NarSize); // the NAR of one regular file: 112 bytes of framing (sizes here are multiples of 8)
        var again = await view.AddContentAddressedAsync("blob.bin", method, new MemoryStream(contents), new SortedSet<StorePath>(), false, default);
        Assert.Equal(first.NarHash, again.NarHash);
        Assert.Equal(first.RegistrationTime, again.RegistrationTime);
        Assert.Single(Blobs());
        Assert.Empty(TempFiles());
    }

    [Fact]
    public async Task A_derivation_s_outputs_are_known_once_it_is_added()
    {
        using var view = await _store.OpenViewAsync("local", default);
        var file = Directory.GetFiles(Repo.Golden("drv", "store"), "*-simple.drv").Single();
        var drv = await view.AddContentAddressedAsync(Path.GetFileName(file)[33..], ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
            File.OpenRead(file), new SortedSet<StorePath>(), false, default);
        Assert.Equal(Path.GetFileName(file), drv.Path.BaseName);
        var outputs = await view.QueryDerivationOutputMapAsync(drv.Path, default);
        var written = Kiln.Nix.Derivations.ATerm.ParseFile(file).Outputs["out"].Path;
        Assert.Equal(written, outputs["out"]!.Value.FullPath);
        Assert.Equal([drv.Path], await view.QueryValidDeriversAsync(outputs["out"]!.Value, default));
    }

    [Fact]
    public async Task A_derivation_larger_than_what_a_flat_upload_keeps_in_memory_is_read_all_the_same()
    {
        // Past NarIngest.FlatInMemory the contents are spooled to a file; the .drv's outputs are still read from them.
        var file = Directory.GetFiles(Repo.Golden("drv", "store"), "*-simple.drv").Single();
        var derivation = Kiln.Nix.Derivations.ATerm.ParseFile(file);
        derivation.Environment["padding"] = new string('x', Kiln.Store.Blobs.NarIngest.FlatInMemory * 2);
        var text = Kiln.Nix.Derivations.ATerm.PrintBytes(derivation);
        Assert.True(text.Length > Kiln.Store.Blobs.NarIngest.FlatInMemory * 2);
        using var view = await _store.OpenViewAsync("local", default);
        var drv = await view.AddContentAddressedAsync(Path.GetFileName(file)[33..], ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
            new MemoryStream(text), new SortedSet<StorePath>(), false, default);
        var outputs = await view.QueryDerivationOutputMapAsync(drv.Path, default);
        Assert.Equal(derivation.Outputs["out"].Path, outputs["out"]!.Value.FullPath);
        Assert.Equal(text.Length + 112 + (8 - text.Length % 8) % 8, drv.NarSize);
        Assert.Empty(TempFiles());
    }

    [Fact]
    public async Task Garbage_collection_follows_roots_and_sweeps_blobs_and_the_tree()
    {
        var keep = Ia("keep");
        var dependency = Ia("dependency");
        var garbage = Ia("garbage");
        using (var view = await _store.OpenViewAsync("local", default))
        {
            await view.AddToStoreAsync(Declared(dependency, HelloNar), new MemoryStream(HelloNar), false, true, default);
            await view.AddToStoreAsync(Declared(keep, TreeNar, dependency), new MemoryStream(TreeNar), false, true, default);
            var other = new NarBuilder().Str("nix-archive-1").File("garbage").ToArray();
            await view.AddToStoreAsync(Declared(garbage, other), new MemoryStream(other), false, true, default);
            await view.AddPermRootAsync(keep, "keep-it", default);

            // While this session lives, what it uploaded is a temporary root.
            using var collector = await _store.OpenViewAsync("local", default);
            Assert.Empty((await collector.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default)).Paths);
        }

        using var gc = await _store.OpenViewAsync("local", default);
        var error = await Assert.ThrowsAsync<KilnException>(() => gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteSpecific, new HashSet<StorePath> { dependency }, 0), default));
        Assert.Contains("still alive", error.Message, StringComparison.Ordinal);
        var dead = await gc.CollectGarbageAsync(new GcRequest(GcAction.ReturnDead, new HashSet<StorePath>(), 0), default);
        Assert.Equal([garbage], dead.Paths);
        var result = await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default);
        Assert.Equal([garbage], result.Paths);
        Assert.Equal(2, Blobs().Length);
        Assert.False(Path.Exists(Path.Combine(_temp["data"], "root", "nix", "store", garbage.BaseName)));
        Assert.True(Path.Exists(Path.Combine(_temp["data"], "root", "nix", "store", keep.BaseName)));
        Assert.Equal(new SortedSet<StorePath> { keep, dependency }, await gc.QueryAllValidPathsAsync(default));
    }

    [Fact]
    public async Task A_pinned_path_survives_garbage_collection_until_unpinned_and_pins_are_per_account()
    {
        var pinned = Ia("pinned");
        var loose = Ia("loose");
        using (var view = await _store.OpenViewAsync("local", default))
        {
            await view.AddToStoreAsync(Declared(pinned, HelloNar), new MemoryStream(HelloNar), false, true, default);
            var other = new NarBuilder().Str("nix-archive-1").File("loose").ToArray();
            await view.AddToStoreAsync(Declared(loose, other), new MemoryStream(other), false, true, default);
            Assert.Equal(new PinRecord("pinned", pinned), await view.PinAsync(pinned, null, default));
            await view.PinAsync(pinned, "release-1.0", default);
            var invalid = await Assert.ThrowsAsync<KilnException>(() => view.PinAsync(pinned, "two\nlines", default));
            Assert.Equal(ErrorKind.Invalid, invalid.Kind);
        }

        // Another account can neither pin a path it does not hold nor see or remove this account's pins.
        using (var bob = await _store.OpenViewAsync("bob", default))
        {
            Assert.Equal(ErrorKind.NotFound, (await Assert.ThrowsAsync<KilnException>(() => bob.PinAsync(pinned, null, default))).Kind);
            Assert.Empty(await bob.PinsAsync(default));
            Assert.Equal(ErrorKind.NotFound, (await Assert.ThrowsAsync<KilnException>(() => bob.UnpinAsync("pinned", default))).Kind);
        }

        using var gc = await _store.OpenViewAsync("local", default);
        Assert.Equal(["pinned", "release-1.0"], (await gc.PinsAsync(default)).Select(p => p.Name));
        Assert.Equal([loose], (await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default)).Paths);
        Assert.Contains(await gc.FindRootsAsync(default), r => r.Key == "release-1.0" && r.Value == pinned);

        // Both pins hold it; once both are gone, so is it.
        await gc.UnpinAsync("pinned", default);
        Assert.Empty((await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default)).Paths);
        await gc.UnpinAsync("release-1.0", default);
        Assert.Equal([pinned], (await gc.CollectGarbageAsync(new GcRequest(GcAction.DeleteDead, new HashSet<StorePath>(), 0), default)).Paths);
        Assert.Equal(ErrorKind.NotFound, (await Assert.ThrowsAsync<KilnException>(() => gc.UnpinAsync("pinned", default))).Kind);
    }

    [Fact]
    public async Task The_servers_own_collection_spares_what_was_just_registered_and_asking_changes_no_root()
    {
        var fresh = Ia("fresh");
        using (var view = await _store.OpenViewAsync("local", default))
        {
            await view.AddToStoreAsync(Declared(fresh, HelloNar), new MemoryStream(HelloNar), false, true, default);
        }

        var account = await _store.Metadata.GetOrCreateAccountAsync("local", default);
        // An indirect root whose link is gone: asking what is dead leaves it; a collection that deletes prunes it.
        await _store.Metadata.AddRootAsync(account, RootKind.Indirect, Path.Combine(_temp.Path, "no-such-link"), fresh, default);
        var dead = await _store.DeadPathsAsync(default);
        Assert.Equal([fresh], dead.Single(d => d.Account == "local").Paths);
        Assert.Single(await _store.Metadata.GetRootsAsync(account, default));

        // Kept while recent (an HTTP push in flight), taken once it need not be.
        Assert.Equal(0, (await _store.CollectAllGarbageAsync(TimeSpan.Zero, default, keepRecent: TimeSpan.FromMinutes(10))).Paths);
        Assert.Empty(await _store.Metadata.GetRootsAsync(account, default));
        Assert.Equal(1, (await _store.CollectAllGarbageAsync(TimeSpan.Zero, default)).Paths);

        // A root kind this version does not know (a newer Kiln's) holds its path rather than being taken for a stale link.
        Assert.Equal(RootKind.Permanent, MetadataRows.ParseKind("some-future-kind"));
        Assert.Equal((RootKind.Indirect, RootKind.Pin), (MetadataRows.ParseKind("indirect"), MetadataRows.ParseKind("pin")));
    }

    [Fact]
    public async Task Kilns_own_files_are_its_alone_and_a_data_directory_others_can_write_is_refused()
    {
        // 19.8 (on 8b92d5f blobs and logs were world-readable: any local user could read every account's uploads).
        using var view = await _store.OpenViewAsync("local", default);
        await view.AddToStoreAsync(Declared(Ia("private"), HelloNar), new MemoryStream(HelloNar), false, true, default);
        var data = _temp["data"];
        Assert.Equal((UnixFileMode)Convert.ToInt32("711", 8), File.GetUnixFileMode(data));
        foreach (var directory in new[] { "blobs", "nar-files", "logs", "tmp", "keys", "root" })
        {
            Assert.Equal((UnixFileMode)Convert.ToInt32("700", 8), File.GetUnixFileMode(Path.Combine(data, directory)));
        }

        Assert.Equal(UnixFileMode.UserRead, File.GetUnixFileMode(Blobs().Single()));

        using var other = new TempDir();
        File.SetUnixFileMode(other.Path, (UnixFileMode)Convert.ToInt32("777", 8));
        var refused = await Assert.ThrowsAsync<KilnException>(() => KilnStore.OpenAsync(new StoreOptions { DataDirectory = other.Path }, default));
        Assert.Contains("chmod go-w", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Verification_finds_a_corrupted_blob()
    {
        using var view = await _store.OpenViewAsync("local", default);
        await view.AddToStoreAsync(Declared(Ia("v"), HelloNar), new MemoryStream(HelloNar), false, true, default);
        var log = new ListLog();
        Assert.False(await view.VerifyStoreAsync(true, false, log, default));
        var blob = Blobs().Single();
        File.SetUnixFileMode(blob, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        var bytes = File.ReadAllBytes(blob);
        bytes[^20] ^= 1;
        File.WriteAllBytes(blob, bytes);
        Assert.True(await view.VerifyStoreAsync(true, false, log, default));
        Assert.Contains(log.Lines, l => l.Contains("was modified", StringComparison.Ordinal));
        var report = await StoreMaintenance.VerifyAllAsync(_store, _ => { }, default);
        Assert.Equal(2, report.Problems.Count);
    }

    [Fact]
    public async Task The_unpacked_tree_is_reconciled_with_the_view()
    {
        var path = Ia("r");
        using (var view = await _store.OpenViewAsync("local", default))
        {
            await view.AddToStoreAsync(Declared(path, TreeNar), new MemoryStream(TreeNar), false, true, default);
        }

        var tree = Path.Combine(_temp["data"], "root", "nix", "store");
        Kiln.Nix.Nar.NarExtractor.DeleteTree(Path.Combine(tree, path.BaseName));
        Directory.CreateDirectory(Path.Combine(tree, "stray"));
        await _store.ReconcileMaterialisedAsync(default);
        Assert.Equal([path.BaseName], Directory.GetFileSystemEntries(tree).Select(Path.GetFileName));
        Assert.Equal(TreeNar, NarBytes(Path.Combine(tree, path.BaseName)));
    }

    private sealed class BreakingStream(byte[] data, int breakAt) : MemoryStream(data)
    {
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            Position >= breakAt ? throw new IOException("the client went away") : base.ReadAsync(buffer[..Math.Min(buffer.Length, 65536)], cancellationToken);
    }

    // The port as the server fills it from retention: here a fixed retention for every account.
    private sealed class FixedRetention(TimeSpan retention, int builds = 0) : IAccountPolicy
    {
        public Task<long> MaxStorageAsync(long id, CancellationToken cancellationToken) => Task.FromResult(0L);

        public Task<TimeSpan> RetentionAsync(long id, CancellationToken cancellationToken) => Task.FromResult(retention);

        public Task<int> RetainedBuildsAsync(long id, CancellationToken cancellationToken) => Task.FromResult(builds);
    }

    [Fact]
    public async Task The_servers_collections_keep_what_an_account_used_within_its_retention_and_pinned_or_held_paths_and_take_the_rest()
    {
        // (The clock is the data's: registrations and uses are dated in the past.)
        var (old, used, pinned, held) = (Ia("old"), Ia("used"), Ia("pinned"), Ia("held"));
        using (var upload = await _store.OpenViewAsync("alice", default))
        {
            foreach (var path in new[] { old, used, pinned, held })
            {
                await upload.AddToStoreAsync(Declared(path, HelloNar), new MemoryStream(HelloNar), false, true, default);
            }
        }

        var alice = await _store.Metadata.GetOrCreateAccountAsync("alice", default);
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        using (var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={Path.Combine(_temp["data"], "kiln.db")}"))
        {
            connection.Open();
            using var age = connection.CreateCommand();
            age.CommandText = $"UPDATE paths SET registration_time = {now - (40 * 86_400)}";
            age.ExecuteNonQuery();
        }

        await _store.Metadata.TouchPathsAsync([(alice, used, now - (10 * 86_400)), (alice, old, now - (35 * 86_400))], default);
        using var session = await _store.OpenViewAsync("alice", default);
        await session.PinAsync(pinned, null, default);
        await session.AddTempRootAsync(held, default); // a build in progress reads it

        // Thirty days: the path used ten days ago stays; the one last used 35 days ago goes, in the dry run as in the
        // collection — unless it is the output of one of the account's latest successful builds it keeps (retention-builds).
        var hash = NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar);
        var older = await _store.Metadata.StartBuildAsync("older", Ia("older.drv").BaseName, alice, now - (50 * 86_400), default);
        await _store.Metadata.FinishBuildAsync(older, new BuildEnd(true, "", "", now - (50 * 86_400), null, null, null,
            [new BuildOutputRecord("out", old, hash, HelloNar.Length, [], null)]), default);
        var latest = await _store.Metadata.StartBuildAsync("latest", Ia("latest.drv").BaseName, alice, now - (45 * 86_400), default);
        await _store.Metadata.FinishBuildAsync(latest, new BuildEnd(true, "", "", now - (45 * 86_400), null, null, null,
            [new BuildOutputRecord("out", pinned, hash, HelloNar.Length, [], null)]), default);
        _store.AccountPolicy = new FixedRetention(TimeSpan.FromDays(30), builds: 2);
        Assert.Empty((await _store.DeadPathsAsync(default)).Single(d => d.Account == "alice").Paths);
        _store.AccountPolicy = new FixedRetention(TimeSpan.FromDays(30), builds: 1); // the latest build's output only
        Assert.Equal([old], (await _store.DeadPathsAsync(default)).Single(d => d.Account == "alice").Paths);
        _store.AccountPolicy = new FixedRetention(TimeSpan.FromDays(30));
        Assert.Equal([old], (await _store.DeadPathsAsync(default)).Single(d => d.Account == "alice").Paths);
        Assert.Equal(1, (await _store.CollectAllGarbageAsync(TimeSpan.Zero, default)).Paths);
        Assert.Equal(new HashSet<StorePath> { used, pinned, held }, (await session.QueryValidPathsAsync([old, used, pinned, held], default)).ToHashSet());

        // A use counted in memory (a download) is written before a collection looks: five days without one, and it is kept.
        _store.AccountPolicy = new FixedRetention(TimeSpan.FromDays(5));
        await (await session.OpenNarAsync(used, default))!.DisposeAsync();
        Assert.Equal(0, (await _store.CollectAllGarbageAsync(TimeSpan.Zero, default)).Paths);

        // A client's own collection is not held by its retention; the store verifies clean afterwards.
        Assert.Equal([used], (await session.CollectGarbageAsync(new Kiln.Protocol.Worker.GcRequest(Kiln.Protocol.Worker.GcAction.DeleteDead, new HashSet<StorePath>(), 0), default)).Paths);
        var log = new ListLog();
        Assert.False(await session.VerifyStoreAsync(true, false, log, default), string.Join("\n", log.Lines)); // (true: errors were found)
    }

    // The port as the server fills it from max-storage: here a fixed quota for one account.
    private sealed class FixedQuota(long account, long bytes) : IAccountPolicy
    {
        public Task<long> MaxStorageAsync(long id, CancellationToken cancellationToken) => Task.FromResult(id == account ? bytes : 0);

        public Task<TimeSpan> RetentionAsync(long id, CancellationToken cancellationToken) => Task.FromResult(TimeSpan.Zero);
    }

    [Fact]
    public async Task A_batch_longer_than_the_grace_period_keeps_its_first_NARs_through_the_sweep()
    {
        // A large closure over a slow link: the first NAR waits for the batch's commit longer than the grace period.
        // The sweep's cleaning of old temporary files (grace zero here) passes over files a writer still uses; it
        // deleted them, and the commit failed at the end of the whole copy.
        using var view = await _store.OpenViewAsync("local", default);
        var path = Ia("slow-batch");
        await using (var batch = view.BeginUploads(false, true))
        {
            await batch.AddAsync(Declared(path, TreeNar), new MemoryStream(TreeNar), default);
            Assert.Single(TempFiles());
            await _store.SweepUnnamedBlobsAsync(TimeSpan.Zero, default);
            Assert.Single(TempFiles());
            await batch.CommitAsync(default);
        }

        await using var nar = await view.OpenNarAsync(path, default);
        Assert.NotNull(nar);
        using var read = new MemoryStream();
        await nar.Content.CopyToAsync(read);
        Assert.Equal(TreeNar, read.ToArray());
        Assert.Empty(TempFiles());

        // What no writer uses any more still goes.
        File.WriteAllBytes(Path.Combine(_temp["data"], "blobs", "tmp", "left-by-a-crash.tmp"), [1]);
        await _store.SweepUnnamedBlobsAsync(TimeSpan.Zero, default);
        Assert.Empty(TempFiles());
    }

    [Fact]
    public async Task A_batch_abandoned_on_a_directory_deletes_nothing_and_waits_for_no_collection_lock()
    {
        // A directory stores nothing before the commit, so a batch never committed has nothing in the store to delete:
        // it must not wait for the collection lock (exclusive, behind every registration under way) to find that out.
        using var view = await _store.OpenViewAsync("local", default);
        var batch = view.BeginUploads(false, true);
        await batch.AddAsync(Declared(Ia("abandoned"), TreeNar), new MemoryStream(TreeNar), default);
        var registration = await _store.GcLock.SharedAsync(default); // as a registration under way holds it
        await using (registration)
        {
            await batch.DisposeAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30));
        }

        Assert.Empty(Blobs());
        Assert.Empty(TempFiles());
        Assert.Empty(await view.QueryValidPathsAsync([Ia("abandoned")], default));
    }

    [Fact]
    public async Task A_batch_whose_commit_fails_deletes_the_blobs_it_stored_before_it_failed()
    {
        // The commit stores every blob (a rename into place) and only then registers: refused there (a reference to a
        // path that is not valid), the blobs it stored go with the batch rather than waiting for the sweep.
        using var view = await _store.OpenViewAsync("local", default);
        var batch = view.BeginUploads(false, true);
        await batch.AddAsync(Declared(Ia("fine"), HelloNar), new MemoryStream(HelloNar), default);
        await batch.AddAsync(Declared(Ia("dangling"), TreeNar, Ia("absent")), new MemoryStream(TreeNar), default);
        var refused = await Assert.ThrowsAsync<KilnException>(() => batch.CommitAsync(default));
        Assert.Equal(ErrorKind.Invalid, refused.Kind);
        await batch.DisposeAsync();
        Assert.Empty(await view.QueryAllValidPathsAsync(default));
        Assert.Empty(Blobs());
        Assert.Empty(TempFiles());
    }

    [Fact]
    public async Task An_upload_past_the_accounts_storage_quota_is_refused_before_anything_is_registered()
    {
        using var alice = await _store.OpenViewAsync("alice", default);
        using var bob = await _store.OpenViewAsync("bob", default);
        _store.AccountPolicy = new FixedQuota(alice.AccountId, HelloNar.Length + TreeNar.Length - 1);
        await alice.AddToStoreAsync(Declared(Hello, HelloNar), new MemoryStream(HelloNar), false, true, default);

        // One byte too many: refused with the figures, nothing registered, nothing left behind.
        var tree = Ia("tree");
        var refused = await Assert.ThrowsAsync<KilnException>(() => alice.AddToStoreAsync(Declared(tree, TreeNar), new MemoryStream(TreeNar), false, true, default));
        Assert.Equal(ErrorKind.TooLarge, refused.Kind);
        Assert.StartsWith("kiln: storage quota exceeded: ", refused.Message, StringComparison.Ordinal);
        Assert.Contains("delete paths or ask for more", refused.Message, StringComparison.Ordinal);
        Assert.Empty(await alice.QueryValidPathsAsync([tree], default));
        Assert.Empty(TempFiles());

        // The same through a batch (AddMultipleToStore): refused at the NAR that passes it.
        await using (var batch = alice.BeginUploads(false, true))
        {
            await Assert.ThrowsAsync<KilnException>(() => batch.AddAsync(Declared(tree, TreeNar), new MemoryStream(TreeNar), default));
        }

        Assert.Empty(await alice.QueryValidPathsAsync([tree], default));

        // What the account already holds is still added (nothing new is stored), and another account has no quota.
        await alice.AddToStoreAsync(Declared(Hello, HelloNar), new MemoryStream(HelloNar), false, true, default);
        await bob.AddToStoreAsync(Declared(tree, TreeNar), new MemoryStream(TreeNar), false, true, default);

        // A path another account stored costs the quota too (storage counts content for every account holding it).
        await Assert.ThrowsAsync<KilnException>(() => alice.AddToStoreAsync(Declared(tree, TreeNar), new MemoryStream(TreeNar), false, true, default));

        // Raised by one byte: it fits (for a new session; one already open reads the quota again within seconds).
        _store.AccountPolicy = new FixedQuota(alice.AccountId, HelloNar.Length + TreeNar.Length);
        using var again = await _store.OpenViewAsync("alice", default);
        await again.AddToStoreAsync(Declared(tree, TreeNar), new MemoryStream(TreeNar), false, true, default);
        Assert.Single(await again.QueryValidPathsAsync([tree], default));
    }

    [Fact]
    public async Task Two_sessions_of_one_account_cannot_pass_its_storage_quota_together()
    {
        // Each session remembers what the account stores for a few seconds (one look per copy, not per path). Both have
        // looked while the account was empty; each upload alone fits; together they would not: the second is refused.
        using var first = await _store.OpenViewAsync("alice", default);
        using var second = await _store.OpenViewAsync("alice", default);
        var small = Ia("small");
        var nar = NarBuilder.Start().Tokens("(", "type", "regular", "contents", "x", ")").ToArray();
        _store.AccountPolicy = new FixedQuota(first.AccountId, HelloNar.Length + TreeNar.Length - 1 + nar.Length * 2);
        await first.AddToStoreAsync(Declared(small, nar), new MemoryStream(nar), false, true, default);
        await second.AddToStoreAsync(Declared(Ia("small-2"), nar), new MemoryStream(nar), false, true, default);

        await first.AddToStoreAsync(Declared(Hello, HelloNar), new MemoryStream(HelloNar), false, true, default);
        var tree = Ia("tree");
        var refused = await Assert.ThrowsAsync<KilnException>(() => second.AddToStoreAsync(Declared(tree, TreeNar), new MemoryStream(TreeNar), false, true, default));
        Assert.StartsWith("kiln: storage quota exceeded: ", refused.Message, StringComparison.Ordinal);
        Assert.Empty(await second.QueryValidPathsAsync([tree], default));
    }
}

/// <summary>A client log that keeps its lines.</summary>
internal sealed class ListLog : IClientLog
{
    public List<string> Lines { get; } = [];

    public void Log(string message) => Lines.Add(message);
}
