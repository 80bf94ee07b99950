using Kiln.Store.Metadata;

namespace Kiln.Api.Tests;

/// <summary>The queue listing across front doors: this front door's entries with what the others published.</summary>
public sealed class QueueDocumentTests
{
    [Fact]
    public void Other_front_doors_entries_follow_this_ones_each_build_once_and_their_lines_add_up()
    {
        var here = new QueueDocument(2, [new(5, "/nix/store/aaaa-a.drv", "running", null, "embedded"), new(null, "/nix/store/bbbb-b.drv", "account-limit", null, null)]);
        var elsewhere = new BoardView(3,
        [
            new("door-b", new BoardEntry(1, 5, "/nix/store/aaaa-a.drv", "running", null, "embedded")), // the same build, waited for through both
            new("door-b", new BoardEntry(1, null, "/nix/store/bbbb-b.drv", "account-limit", null, null)), // the same derivation waiting on both
            new("door-b", new BoardEntry(1, 9, "/nix/store/cccc-c.drv", "waiting", 4, null)),
            new("door-c", new BoardEntry(1, null, "/nix/store/dddd-d.drv", "account-limit", null, null)),
        ]);

        var merged = QueueDocument.Of(here, elsewhere);

        Assert.Equal(5, merged.Waiting);
        Assert.Equal(
        [
            here.Builds[0], here.Builds[1],
            new QueueEntryDocument(9, "/nix/store/cccc-c.drv", "waiting", 4, null),
            new QueueEntryDocument(null, "/nix/store/dddd-d.drv", "account-limit", null, null),
        ], merged.Builds);
        Assert.Same(here, QueueDocument.Of(here, null)); // no other front door (or the board unreadable): this one's alone
    }
}
