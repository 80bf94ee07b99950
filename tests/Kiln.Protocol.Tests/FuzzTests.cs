using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Nix.Wire;
using Kiln.Protocol.Serve;

namespace Kiln.Protocol.Tests;

/// <summary>
/// 20.4: worker-protocol conversations of four protocol versions (a query, AddToStore, AddTextToStore, an upload,
/// AddMultipleToStore, a NAR download), mutated: the session must end by itself with a reason, never with an internal
/// error, never hang. RobustnessTests cuts and corrupts them one byte at a time; this changes several things at once.
/// </summary>
public class FuzzTests
{
    [Fact]
    public async Task Worker_session()
    {
        var seeds = new[] { 21, 34, 37, 38 }.SelectMany(minor => new[]
        {
            RobustnessTests.Conversation(minor, withBatch: true),
            RobustnessTests.Conversation(minor, withBatch: false),
        });
        var corpus = Fuzzer.Corpus("worker", seeds);
        await Fuzzer.RunAsync("worker", corpus, async input =>
        {
            var outcome = await SessionHarness.RunAsync(new FakeStore(), input);
            Assert.False(outcome.Summary.CloseReason?.StartsWith("internal error", StringComparison.Ordinal) ?? false, outcome.Summary.CloseReason);
        }, _ => false, Fuzzer.Iterations(5000), TimeSpan.FromSeconds(20));
    }
}

/// <summary>
/// 20.4: serve-protocol conversations (<c>nix-store --serve --write</c> of protocol 2.5 and 2.7: queries, a NAR dump,
/// the closure, an export, AddToStoreNar, an import in the export format, BuildPaths and BuildDerivation), mutated: the
/// session ends by itself with a reason, never an internal error, never a hang, and never leaves an import's spool file.
/// </summary>
public class ServeFuzzTests
{
    internal static byte[] Conversation(int minor)
    {
        var hello = TranscriptTests.Hello.FullPath;
        var info = TranscriptTests.HelloInfo;
        var nar = TranscriptTests.HelloNar;
        var upload = info with { Path = StorePath.Parse("/nix/store/" + new string('a', 32) + "-uploaded") };
        var imported = info with { Path = StorePath.Parse("/nix/store/" + new string('b', 32) + "-imported") };
        var bytes = ServeHarness.ClientHandshake(minor)
            .U64(1).Bool(true).Bool(false).Strs(hello, upload.Path.FullPath) // QueryValidPaths
            .U64(2).Strs(hello) // QueryPathInfos
            .U64(3).Str(hello) // DumpStorePath
            .U64(7).Bool(true).Strs(hello) // QueryClosure
            .U64(5).U64(0).Strs(hello) // ExportPaths
            .U64(9).Str(upload.Path.FullPath).Str("").Str(info.NarHash.ToBase16()).Strs().U64(0).U64((ulong)info.NarSize).Bool(false).Strs().Str("").Raw(nar)
            .U64(4).U64(1).Raw(nar).U64(0x4558494e).Str(imported.Path.FullPath).Strs().Str("").U64(0).U64(0); // ImportPaths
        var options = Bytes.New().U64(10).U64(20).U64(1000);
        if (minor >= 3)
        {
            options.U64(0).U64(0);
        }

        if (minor >= 7)
        {
            options.U64(0);
        }

        var drv = "/nix/store/" + new string('c', 32) + "-thing.drv";
        bytes.U64(6).Strs(drv + "!out").Then(options);
        bytes.U64(8).Str(drv)
            .U64(1).Str("out").Str("/nix/store/" + new string('d', 32) + "-thing").Str("").Str("") // outputs
            .Strs(hello).Str("x86_64-linux").Str("/bin/sh").Strs("-c", "echo hi > $out")
            .U64(2).Str("out").Str("/nix/store/" + new string('d', 32) + "-thing").Str("name").Str("thing")
            .Then(Bytes.New().U64(10).U64(20).U64(1000));
        if (minor >= 3)
        {
            bytes.U64(0).U64(0);
        }

        if (minor >= 7)
        {
            bytes.U64(0);
        }

        return bytes.ToArray();
    }

    [Fact]
    public async Task A_whole_conversation_is_served()
    {
        foreach (var minor in new[] { 5, 7 })
        {
            var store = new FakeStore();
            store.Add(TranscriptTests.HelloInfo, TranscriptTests.HelloNar);
            var outcome = await ServeHarness.RunAsync(store, Conversation(minor));
            Assert.Null(outcome.Summary.CloseReason);
            Assert.Equal(9, outcome.Summary.Operations);
            Assert.Equal(3, store.Infos.Count); // hello, the upload and the import
            Assert.Contains("a line for stderr", outcome.Stderr);
        }
    }

    [Fact]
    public async Task Serve_session()
    {
        var spools = Spools();
        var corpus = Fuzzer.Corpus("serve", new[] { 5, 7 }.Select(Conversation));
        await Fuzzer.RunAsync("serve", corpus, async input =>
        {
            var store = new FakeStore();
            store.Add(TranscriptTests.HelloInfo, TranscriptTests.HelloNar);
            var outcome = await ServeHarness.RunAsync(store, input, new ServeSessionOptions { Limits = WireLimits.Default });
            Assert.False(outcome.Summary.CloseReason?.StartsWith("internal error", StringComparison.Ordinal) ?? false, outcome.Summary.CloseReason);
        }, _ => false, Fuzzer.Iterations(3000), TimeSpan.FromSeconds(20));
        Assert.Equal(spools, Spools());
    }

    private static int Spools() => Directory.GetFiles(Path.GetTempPath(), "kiln-import-*.nar").Length;
}
