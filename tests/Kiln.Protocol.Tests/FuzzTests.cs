using Kiln.Nix.Tests.Support;

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
