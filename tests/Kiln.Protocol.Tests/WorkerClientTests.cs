using System.IO.Pipelines;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Protocol.Tests;

/// <summary>
/// The worker protocol's client (what Kiln speaks to a stock builder's daemon) against Kiln's own daemon side, at the
/// versions whose wire differs: Nix 2.3's 1.21 (unframed NAR uploads, old errors), 1.34 and 1.38 (answered as 1.37).
/// The end-to-end tests drive it against a real Nix 2.34 daemon.
/// </summary>
public sealed class WorkerClientTests
{
    private static readonly byte[] Nar = NarBuilder.Start().File("hello from the client\n").ToArray();

    private static readonly ValidPathInfo Info = new()
    {
        Path = StorePath.Parse("/nix/store/7rjj86a15146cq1d2cs0y4mgy0wcmn93-uploaded"),
        NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, Nar),
        NarSize = Nar.Length,
        References = new SortedSet<StorePath> { TranscriptTests.Hello },
    };

    // A session of Kiln's daemon side on in-memory pipes, and a client connected to it.
    private static async Task<(WorkerClient Client, Task Session, Pipe ToServer)> ConnectAsync(FakeStore store, int serverMinor)
    {
        var toServer = new Pipe();
        var fromServer = new Pipe();
        var session = new WorkerSession(store, new WorkerSessionOptions { ServerVersion = new ProtocolVersion(1, serverMinor) }, NullLogger.Instance);
        var run = session.RunAsync(toServer.Reader, fromServer.Writer, fileSender: null, CancellationToken.None);
        var client = await WorkerClient.ConnectAsync(fromServer.Reader, toServer.Writer, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(30));
        return (client, run, toServer);
    }

    [Theory]
    [InlineData(21)]
    [InlineData(34)]
    [InlineData(38)]
    public async Task Queries_uploads_and_downloads_round_trip(int serverMinor)
    {
        var store = TranscriptTests.StoreWithHello();
        var (client, session, toServer) = await ConnectAsync(store, serverMinor);
        Assert.Equal(Math.Min(serverMinor, 37), client.Version.Minor);

        var valid = await client.QueryValidPathsAsync([TranscriptTests.Hello, Info.Path], CancellationToken.None);
        Assert.Equal([TranscriptTests.Hello], valid);
        Assert.Null(await client.QueryPathInfoAsync(Info.Path, CancellationToken.None));
        var hello = await client.QueryPathInfoAsync(TranscriptTests.Hello, CancellationToken.None);
        Assert.NotNull(hello);
        Assert.Equal(TranscriptTests.HelloInfo.NarHash, hello.NarHash);
        Assert.Equal(TranscriptTests.HelloInfo.References, hello.References);
        if (serverMinor >= 16)
        {
            Assert.Equal(TranscriptTests.HelloInfo.ContentAddress, hello.ContentAddress);
            Assert.Equal(TranscriptTests.HelloInfo.Signatures, hello.Signatures);
        }

        // An upload (framed from 1.23, raw before), then the path is there with its NAR, which comes back whole.
        await client.AddToStoreNarAsync(Info, new MemoryStream(Nar), repair: false, CancellationToken.None);
        Assert.Equal(Nar, store.Nars[Info.Path]);
        Assert.Equal(Info.References, store.Infos[Info.Path].References);
        var download = await client.NarFromPathAsync(Info.Path, CancellationToken.None);
        using var copy = new MemoryStream();
        await download.CopyToAsync(copy);
        Assert.Equal(Nar, copy.ToArray());

        // The connection is still in step after the NAR: another request works.
        Assert.Equal(2, (await client.QueryValidPathsAsync([TranscriptTests.Hello, Info.Path], CancellationToken.None)).Count);

        await toServer.Writer.CompleteAsync();
        await session.WaitAsync(TimeSpan.FromSeconds(30));
    }

    [Theory]
    [InlineData(21)]
    [InlineData(38)]
    public async Task A_daemon_error_is_a_NixErrorException_with_its_message_and_the_connection_goes_on(int serverMinor)
    {
        var store = TranscriptTests.StoreWithHello();
        var (client, _, toServer) = await ConnectAsync(store, serverMinor);

        // A NAR that is not the one described: the daemon refuses it with its reason.
        var wrong = Info with { NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, [1, 2, 3]) };
        var error = await Assert.ThrowsAnyAsync<NixErrorException>(() => client.AddToStoreNarAsync(wrong, new MemoryStream(Nar), repair: false, CancellationToken.None));
        Assert.Contains("hash", error.Message, StringComparison.OrdinalIgnoreCase);
        Assert.False(store.Nars.ContainsKey(Info.Path));
        await toServer.Writer.CompleteAsync();
    }

    [Fact]
    public async Task Something_that_is_not_a_daemon_is_refused_at_the_handshake()
    {
        var fromServer = new Pipe();
        var toServer = new Pipe();
        await fromServer.Writer.WriteAsync("SSH-2.0-OpenSSH_9.6\r\nnot a daemon at all"u8.ToArray());
        await fromServer.Writer.CompleteAsync();
        var refused = await Assert.ThrowsAsync<ProtocolViolationException>(() => WorkerClient.ConnectAsync(fromServer.Reader, toServer.Writer, CancellationToken.None));
        Assert.Contains("does not speak the worker protocol", refused.Message, StringComparison.Ordinal);

        // A daemon too old for Kiln (Nix before 2.3) is told apart from garbage.
        var old = new Pipe();
        await old.Writer.WriteAsync(Bytes.New().U64(0x6478696f).U64(0x114).ToArray());
        var tooOld = await Assert.ThrowsAsync<ProtocolViolationException>(() => WorkerClient.ConnectAsync(old.Reader, new Pipe().Writer, CancellationToken.None));
        Assert.Contains("1.20", tooOld.Message, StringComparison.Ordinal);
    }
}
