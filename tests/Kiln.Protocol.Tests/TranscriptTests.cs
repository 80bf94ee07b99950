using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;

namespace Kiln.Protocol.Tests;

/// <summary>
/// Every operation as a byte transcript: what a client of each protocol version sends, and exactly what Kiln must
/// answer (1.21 = Nix 2.3, 1.34 = Nix 2.8, 1.37 = Nix 2.20, 1.38 = Nix 2.24 and later).
/// </summary>
public class TranscriptTests
{
    public static TheoryData<int> Minors() => new(21, 34, 37, 38);

    internal static readonly byte[] HelloNar = File.ReadAllBytes(Repo.Golden("nar", "hello.txt.nar"));
    internal static readonly StorePath Hello = StorePath.Parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt");
    private static readonly StorePath Missing = StorePath.Parse("/nix/store/0r44ha39vj6hfc5b9m87rbvszw9ymffc-missing");
    private static readonly StorePath Drv = StorePath.Parse("/nix/store/0r44ha39vj6hfc5b9m87rbvszw9ymffc-foo.drv");
    private static readonly StorePath DrvOut = StorePath.Parse("/nix/store/184pz5dk2vpgz5f8aiwvzr6qx5s0d0ji-foo");

    internal static ValidPathInfo HelloInfo => new()
    {
        Path = Hello,
        NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, HelloNar),
        NarSize = HelloNar.Length,
        RegistrationTime = 1700000000,
        Signatures = new SortedSet<string>(StringComparer.Ordinal) { "test-key-1:GEOKzKtcQQJDLaxdPZSYOX9BZhkCHZvHNMGx2KTS4/m5mZ8ROkYezx0mTXp01O+i7x0dWcBJBmLqSdnNjSGmCw==" },
        ContentAddress = ContentAddress.Parse("fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"),
    };

    internal static FakeStore StoreWithHello()
    {
        var store = new FakeStore();
        store.Add(HelloInfo, HelloNar);
        store.Add(HelloInfo with { Path = Drv, References = new SortedSet<StorePath> { Hello }, ContentAddress = null }, HelloNar);
        store.Outputs[Drv] = new Dictionary<string, StorePath?> { ["out"] = DrvOut };
        return store;
    }

    private static ProtocolVersion V(int minor) => new(1, minor);

    /// <summary>Runs handshake + one request and checks the reply is exactly <paramref name="reply"/>.</summary>
    private static async Task<FakeStore> ExpectAsync(int minor, Bytes request, Bytes reply, FakeStore? store = null)
    {
        store ??= StoreWithHello();
        var version = V(minor);
        var input = SessionHarness.ClientHandshake(version).Then(request).ToArray();
        var outcome = await SessionHarness.RunAsync(store, input);
        var expected = SessionHarness.ServerHandshake(version).Then(reply).ToArray();
        Assert.Equal(Convert.ToHexString(expected), Convert.ToHexString(outcome.Output));

        // Chunked one byte at a time, the same conversation.
        var trickled = await SessionHarness.RunAsync(store, input, chunk: 1);
        Assert.Equal(Convert.ToHexString(expected), Convert.ToHexString(trickled.Output));
        return store;
    }

    private static Bytes PathInfo(ValidPathInfo info, int minor, bool withPath = false)
    {
        var bytes = Bytes.New();
        if (withPath)
        {
            bytes.Str(info.Path.FullPath);
        }

        bytes.Str(info.Deriver?.FullPath ?? "").Str(info.NarHash.ToBase16()).Strs([.. info.References.Select(r => r.FullPath)])
            .U64((ulong)info.RegistrationTime).U64((ulong)info.NarSize);
        if (minor >= 16)
        {
            bytes.Bool(info.Ultimate).Strs([.. info.Signatures]).Str(info.ContentAddress?.ToString() ?? "");
        }

        return bytes;
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task Handshake(int minor)
    {
        var outcome = await SessionHarness.RunAsync(new FakeStore(), SessionHarness.ClientHandshake(V(minor)).ToArray());
        Assert.Equal(SessionHarness.ServerHandshake(V(minor)).ToArray(), outcome.Output);
        Assert.Equal(V(minor), outcome.Summary.ClientVersion);
        Assert.Null(outcome.Summary.CloseReason);
    }

    [Fact]
    public async Task Refuses_clients_older_than_nix_2_3_with_an_error_they_can_read()
    {
        var outcome = await SessionHarness.RunAsync(new FakeStore(), SessionHarness.ClientHandshake(V(20)).ToArray());
        var expected = Bytes.New().U64(0x6478696f).U64(V(38).ToWire())
            .ErrorFrame(V(20), "Nix client protocol 1.20 is too old for Kiln, which needs 1.21 (Nix 2.3) or newer").ToArray();
        Assert.Equal(expected, outcome.Output);
        Assert.Equal("client version too old", outcome.Summary.CloseReason);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public Task IsValidPath(int minor) => ExpectAsync(minor,
        Bytes.New().U64(1).Str(Hello.FullPath).U64(1).Str(Missing.FullPath),
        Bytes.New().U64(Bytes.Last).Bool(true).U64(Bytes.Last).Bool(false));

    [Theory]
    [MemberData(nameof(Minors))]
    public Task QueryValidPaths(int minor)
    {
        var request = Bytes.New().U64(31).Strs(Missing.FullPath, Hello.FullPath);
        if (minor >= 27)
        {
            request.Bool(false);
        }

        return ExpectAsync(minor, request, Bytes.New().U64(Bytes.Last).Strs(Hello.FullPath));
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public Task QueryPathInfo(int minor) => ExpectAsync(minor,
        Bytes.New().U64(26).Str(Hello.FullPath).U64(26).Str(Missing.FullPath),
        Bytes.New().U64(Bytes.Last).U64(1).Then(PathInfo(HelloInfo, minor)).U64(Bytes.Last).U64(0));

    [Theory]
    [MemberData(nameof(Minors))]
    public Task Queries_by_hash_part_referrers_derivers_and_outputs(int minor) => ExpectAsync(minor,
        Bytes.New()
            .U64(29).Str(Hello.HashPart)
            .U64(6).Str(Hello.FullPath)
            .U64(33).Str(DrvOut.FullPath)
            .U64(41).Str(Drv.FullPath)
            .U64(18).Str(Hello.FullPath)
            .U64(5).Str(Drv.FullPath)
            .U64(4).Str(Hello.FullPath),
        Bytes.New()
            .U64(Bytes.Last).Str(Hello.FullPath)
            .U64(Bytes.Last).Strs(Drv.FullPath)
            .U64(Bytes.Last).Strs(Drv.FullPath)
            .U64(Bytes.Last).U64(1).Str("out").Str(DrvOut.FullPath)
            .U64(Bytes.Last).Str("")
            .U64(Bytes.Last).Strs(Hello.FullPath)
            .U64(Bytes.Last).Str(HelloInfo.NarHash.ToBase16()));

    [Theory]
    [MemberData(nameof(Minors))]
    public Task NarFromPath_sends_the_raw_nar(int minor) => ExpectAsync(minor,
        Bytes.New().U64(38).Str(Hello.FullPath).U64(1).Str(Hello.FullPath),
        Bytes.New().U64(Bytes.Last).Raw(HelloNar).U64(Bytes.Last).Bool(true));

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task AddToStoreNar_in_the_version_s_form(int minor)
    {
        var info = HelloInfo;
        var request = Bytes.New().U64(39).Str(info.Path.FullPath).Str("").Str(info.NarHash.ToBase16()).Strs()
            .U64(1700000000).U64((ulong)info.NarSize).Bool(false).Strs().Str(info.ContentAddress!.Value.ToString()).Bool(false).Bool(false);
        var reply = Bytes.New();
        if (minor >= 23)
        {
            request.Framed(HelloNar);
        }
        else
        {
            // Nix 2.3: the daemon asks for the data (STDERR_READ) and the client answers with a string.
            request.Raw(Bytes.New().Str(System.Text.Encoding.Latin1.GetString(HelloNar)).ToArray());
            reply.U64(Bytes.Read).U64((ulong)HelloNar.Length);
        }

        reply.U64(Bytes.Last);
        var store = await ExpectAsync(minor, request, reply, new FakeStore());
        Assert.Equal(HelloNar, store.Nars[Hello]);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task AddToStore_computes_the_content_addressed_path(int minor)
    {
        Bytes request, reply;
        if (minor >= 25)
        {
            request = Bytes.New().U64(7).Str("hello.txt").Str("fixed:r:sha256").Strs().Bool(false).Framed(HelloNar);
            reply = Bytes.New().U64(Bytes.Last).Then(PathInfo(HelloInfo with { Signatures = new SortedSet<string>() }, minor, withPath: true));
        }
        else
        {
            request = Bytes.New().U64(7).Str("hello.txt").U64(1).U64(1).Str("sha256").Raw(HelloNar);
            reply = Bytes.New().U64(Bytes.Last).Str(Hello.FullPath);
        }

        var store = await ExpectAsync(minor, request, reply, new FakeStore());
        Assert.Contains(Hello, store.Infos.Keys);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task Old_flat_AddToStore_takes_the_file_out_of_its_nar(int minor)
    {
        if (minor >= 25)
        {
            return; // newer clients send flat contents as they are
        }

        var flat = StorePath.Parse("/nix/store/gy454w1cxaq731grqwylhzf4pp9r5izh-hello.txt");
        var store = await ExpectAsync(minor,
            Bytes.New().U64(7).Str("hello.txt").U64(1).U64(0).Str("sha256").Raw(HelloNar),
            Bytes.New().U64(Bytes.Last).Str(flat.FullPath), new FakeStore());
        Assert.Contains("AddContentAddressed hello.txt fixed:sha256 6", store.Calls);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public Task AddTextToStore(int minor)
    {
        // builtins.toFile "script.sh" "cat <hello>\n" (Golden/drv/sources.txt).
        var text = $"cat {Hello}\n";
        return ExpectAsync(minor,
            Bytes.New().U64(8).Str("script.sh").Str(text).Strs(Hello.FullPath),
            Bytes.New().U64(Bytes.Last).Str("/nix/store/bzj23iw9rh8fbiagnrf8q351npvrdlbi-script.sh"));
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task AddMultipleToStore_registers_the_batch(int minor)
    {
        if (minor < 32)
        {
            return; // introduced in 1.32
        }

        var content = Bytes.New().U64(1).Then(PathInfo(HelloInfo, 16, withPath: true)).Raw(HelloNar).ToArray();
        var store = await ExpectAsync(minor,
            Bytes.New().U64(44).Bool(false).Bool(false).Framed(content, chunk: 13),
            Bytes.New().U64(Bytes.Last), new FakeStore());
        Assert.Equal(HelloNar, store.Nars[Hello]);
        Assert.Contains("Commit 1", store.Calls);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public Task Roots_and_garbage_collection(int minor)
    {
        var request = Bytes.New()
            .U64(11).Str(Hello.FullPath)
            .U64(12).Str("/home/user/result")
            .U64(13)
            .U64(14)
            .U64(20).U64(1).Strs().Bool(false).U64(0).U64(0).U64(0).U64(0);
        var reply = Bytes.New()
            .U64(Bytes.Last).U64(1)
            .U64(Bytes.Last).U64(1)
            .U64(Bytes.Last).U64(1)
            .U64(Bytes.Last).U64(0)
            .U64(Bytes.Last).Strs(Drv.FullPath, Hello.FullPath).U64(0).U64(0);
        return ExpectAsync(minor, request, reply);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public Task Signatures_verification_options_and_optimise(int minor)
    {
        var request = Bytes.New()
            .U64(37).Str(Hello.FullPath).Strs("k:" + Convert.ToBase64String(new byte[64]))
            .U64(35).Bool(true).Bool(false)
            .U64(19).U64(0).U64(0).U64(0).U64(3).U64(1).U64(0).U64(1).U64(0).U64(0).U64(0).U64(1).U64(1).U64(1).Str("max-jobs").Str("4")
            .U64(34);
        var reply = Bytes.New()
            .U64(Bytes.Last).U64(1)
            .U64(Bytes.Next).Str("checking the fake store\n").U64(Bytes.Last).Bool(false)
            .U64(Bytes.Last)
            .U64(Bytes.Next).Str("Kiln's store keeps each NAR once, by its hash: there is nothing to optimise\n").U64(Bytes.Last).U64(1);
        return ExpectAsync(minor, request, reply);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public Task Errors_are_reported_and_the_session_goes_on(int minor) => ExpectAsync(minor,
        Bytes.New().U64(10).Str(Missing.FullPath).U64(1).Str(Hello.FullPath),
        Bytes.New().ErrorFrame(V(minor), $"path '{Missing}' does not exist and cannot be created").U64(Bytes.Last).Bool(true));

    [Theory]
    [MemberData(nameof(Minors))]
    public Task A_nar_that_does_not_match_its_hash_is_refused_and_the_stream_stays_in_step(int minor)
    {
        var info = HelloInfo;
        var bad = HelloNar.ToArray();
        bad[^20] ^= 1;
        var request = Bytes.New().U64(39).Str(info.Path.FullPath).Str("").Str(info.NarHash.ToBase16()).Strs()
            .U64(0).U64((ulong)info.NarSize).Bool(false).Strs().Str("").Bool(false).Bool(false);
        var reply = Bytes.New();
        if (minor >= 23)
        {
            request.Framed(bad);
        }
        else
        {
            request.Raw(Bytes.New().Str(System.Text.Encoding.Latin1.GetString(bad)).ToArray());
            reply.U64(Bytes.Read).U64((ulong)bad.Length);
        }

        request.U64(1).Str(Hello.FullPath);
        reply.ErrorFrame(V(minor), $"hash mismatch importing path '{Hello}'").U64(Bytes.Last).Bool(false);
        return ExpectAsync(minor, request, reply, new FakeStore());
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public Task QueryMissing_and_builds_of_what_is_valid(int minor)
    {
        var request = Bytes.New()
            .U64(40).Strs(Hello.FullPath, Missing.FullPath)
            .U64(9).Strs(Hello.FullPath);
        if (minor >= 15)
        {
            request.U64(0);
        }

        var reply = Bytes.New()
            .U64(Bytes.Last).Strs().Strs().Strs(Missing.FullPath).U64(0).U64(0)
            .U64(Bytes.Last).U64(1);
        return ExpectAsync(minor, request, reply);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task BuildPathsWithResults_reports_valid_outputs(int minor)
    {
        if (minor < 34)
        {
            return;
        }

        var store = StoreWithHello();
        store.Add(HelloInfo with { Path = DrvOut }, HelloNar);
        var request = Bytes.New().U64(46).Strs($"{Drv}!out", Hello.FullPath).U64(0);
        var result = Bytes.New().U64(2).Str("").U64(0).Bool(false).U64(0).U64(0);
        if (minor >= 37)
        {
            result.U64(0).U64(0);
        }

        var withOutput = Bytes.New().Then(result).U64(1).Str($"sha256:{new string('0', 64)}!out")
            .Str($$$"""{"id":"sha256:{{{new string('0', 64)}}}!out","outPath":"{{{DrvOut.BaseName}}}","signatures":[],"dependentRealisations":{}}""");
        var withoutOutputs = Bytes.New().Then(result).U64(0);
        await ExpectAsync(minor, request,
            Bytes.New().U64(Bytes.Last).U64(2).Str($"{Drv}!out").Then(withOutput).Str(Hello.FullPath).Then(withoutOutputs), store);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public Task Building_is_refused_clearly_until_builds_arrive(int minor)
    {
        var request = Bytes.New().U64(9).Strs($"{Drv}!out");
        if (minor >= 15)
        {
            request.U64(0);
        }

        request.U64(1).Str(Hello.FullPath);
        var store = StoreWithHello();
        return ExpectAsync(minor, request,
            Bytes.New().ErrorFrame(V(minor), "Kiln cannot build yet: building arrives with the builds work; the store operations work").U64(Bytes.Last).Bool(true), store);
    }

    [Fact]
    public async Task AddPermRoot_and_realisations_on_newer_versions()
    {
        await ExpectAsync(38,
            Bytes.New().U64(47).Str(Hello.FullPath).Str("/home/user/keep").U64(43).Str($"sha256:{new string('0', 64)}!out"),
            Bytes.New().U64(Bytes.Last).Str("/home/user/keep").U64(Bytes.Last).U64(0));
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task An_unknown_operation_is_reported_and_closes_the_session(int minor)
    {
        var input = SessionHarness.ClientHandshake(V(minor)).U64(999).U64(1).Str(Hello.FullPath).ToArray();
        var outcome = await SessionHarness.RunAsync(StoreWithHello(), input);
        var expected = SessionHarness.ServerHandshake(V(minor)).ErrorFrame(V(minor), "invalid operation 999").ToArray();
        Assert.Equal(expected, outcome.Output);
        Assert.Contains("invalid operation", outcome.Summary.CloseReason, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task A_malformed_store_path_is_reported_and_closes_the_session(int minor)
    {
        var input = SessionHarness.ClientHandshake(V(minor)).U64(1).Str("/etc/passwd").U64(1).Str(Hello.FullPath).ToArray();
        var outcome = await SessionHarness.RunAsync(StoreWithHello(), input);
        var expected = SessionHarness.ServerHandshake(V(minor)).ErrorFrame(V(minor), "path '/etc/passwd' is not in the Nix store").ToArray();
        Assert.Equal(expected, outcome.Output);
        Assert.NotNull(outcome.Summary.CloseReason);
    }
}
