namespace Kiln.Protocol.Tests;

/// <summary>
/// A conversation cut short at every byte, and with a byte corrupted at every position: the session must end (with
/// a reason when the cut is mid-message), never throw, never hang, and never leave an upload half-registered.
/// </summary>
public class RobustnessTests
{
    public static TheoryData<int> Minors() => new(21, 34, 37, 38);

    // The conversation, and where the AddMultipleToStore request ends (a commit is only allowed after that).
    internal static byte[] Conversation(int minor, bool withBatch) => ConversationWithBatchEnd(minor, withBatch).Bytes;

    private static (byte[] Bytes, int BatchEnd) ConversationWithBatchEnd(int minor, bool withBatch)
    {
        var version = new ProtocolVersion(1, minor);
        var info = TranscriptTests.HelloInfo;
        var bytes = SessionHarness.ClientHandshake(version)
            .U64(1).Str(TranscriptTests.Hello.FullPath)
            .U64(26).Str(TranscriptTests.Hello.FullPath)
            .U64(8).Str("note").Str("some text").Strs();
        var upload = Bytes.New().U64(39).Str(info.Path.FullPath).Str("").Str(info.NarHash.ToBase16()).Strs()
            .U64(0).U64((ulong)info.NarSize).Bool(false).Strs().Str("").Bool(false).Bool(false);
        if (minor >= 23)
        {
            upload.Framed(TranscriptTests.HelloNar, chunk: 32);
        }
        else
        {
            upload.Raw(Bytes.New().Str(System.Text.Encoding.Latin1.GetString(TranscriptTests.HelloNar)).ToArray());
        }

        bytes.Then(upload);
        if (withBatch && minor >= 32)
        {
            var content = Bytes.New().U64(1).Str(info.Path.FullPath).Str("").Str(info.NarHash.ToBase16()).Strs()
                .U64(0).U64((ulong)info.NarSize).Bool(false).Strs().Str("").Raw(TranscriptTests.HelloNar).ToArray();
            bytes.U64(44).Bool(false).Bool(false).Framed(content, chunk: 40);
        }

        var batchEnd = bytes.ToArray().Length;
        return (bytes.U64(38).Str(TranscriptTests.Hello.FullPath).ToArray(), batchEnd);
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task Truncated_at_every_byte(int minor)
    {
        var (full, batchEnd) = ConversationWithBatchEnd(minor, withBatch: true);
        for (var cut = 0; cut < full.Length; cut++)
        {
            var store = new FakeStore();
            var outcome = await SessionHarness.RunAsync(store, full[..cut]);
            Assert.False(outcome.Summary.CloseReason?.StartsWith("internal error", StringComparison.Ordinal) ?? false,
                $"cut at {cut}: {outcome.Summary.CloseReason}");

            // A batch cut short is never committed.
            if (cut < batchEnd)
            {
                Assert.DoesNotContain(store.Calls, c => c.StartsWith("Commit", StringComparison.Ordinal));
            }
        }
    }

    [Theory]
    [MemberData(nameof(Minors))]
    public async Task Garbage_at_every_byte(int minor)
    {
        var full = Conversation(minor, withBatch: false);
        var random = new Random(minor);
        for (var position = 0; position < full.Length; position++)
        {
            var corrupted = full.ToArray();
            corrupted[position] = (byte)(corrupted[position] ^ (1 + random.Next(255)));
            var outcome = await SessionHarness.RunAsync(new FakeStore(), corrupted);
            Assert.False(outcome.Summary.CloseReason?.StartsWith("internal error", StringComparison.Ordinal) ?? false,
                $"byte {position}: {outcome.Summary.CloseReason}");
        }
    }

    [Fact]
    public async Task A_client_gone_in_the_middle_of_a_batch_leaves_nothing_registered()
    {
        var (full, batchEnd) = ConversationWithBatchEnd(38, withBatch: true);
        var store = new FakeStore();
        var outcome = await SessionHarness.RunAsync(store, full[..(batchEnd - 100)]);
        Assert.DoesNotContain(store.Calls, c => c.StartsWith("Commit", StringComparison.Ordinal));
        Assert.Contains(store.Calls, c => c.StartsWith("Discard", StringComparison.Ordinal) || c.StartsWith("AddToStore", StringComparison.Ordinal));
        Assert.Equal("the connection closed in the middle of a message", outcome.Summary.CloseReason);
    }
}

/// <summary>
/// Measures the whole process's allocations, so it runs alone: a session's continuations hop between pool threads,
/// and other tests running meanwhile would count against it.
/// </summary>
[CollectionDefinition(nameof(AllocationTests), DisableParallelization = true)]
[Collection(nameof(AllocationTests))]
public sealed class AllocationTests
{
    [Fact]
    public async Task Huge_lengths_are_refused_before_anything_is_allocated()
    {
        var version = new ProtocolVersion(1, 38);
        foreach (var request in new[]
        {
            Bytes.New().U64(1).U64(1UL << 40),                       // a 1 TiB store path
            Bytes.New().U64(31).U64(1UL << 40),                      // a list of 2^40 paths
            Bytes.New().U64(8).Str("x").U64(1UL << 36),              // a 64 GiB text
            Bytes.New().U64(44).Bool(false).Bool(false).U64(1UL << 40), // a 1 TiB frame
        })
        {
            var input = SessionHarness.ClientHandshake(version).Then(request).ToArray();
            var before = GC.GetTotalAllocatedBytes(precise: true);
            var outcome = await SessionHarness.RunAsync(new FakeStore(), input);
            Assert.NotNull(outcome.Summary.CloseReason);
            Assert.True(GC.GetTotalAllocatedBytes(precise: true) - before < 64 << 20);
        }
    }
}
