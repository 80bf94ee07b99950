using Kiln.Store.Metadata;

namespace Kiln.Api.Tests;

/// <summary>The queue listing and the farm across front doors: this front door's with what the others published.</summary>
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

    [Fact]
    public void The_farm_adds_up_the_other_front_doors_published_farms_and_names_their_agents_front_doors()
    {
        var here = new FarmDocument(1, 2, 4, 2, 10, 3, [new("embedded", "agent", ["x86_64-linux"], 4, 2)]);
        var there = new FarmDocument(5, 1, 8, 1, 20, 4, [new("embedded", "agent", ["x86_64-linux"], 2, 1), new("big", "stock-builder", ["aarch64-linux"], 6, 0)]);

        var farm = FarmDocument.Of(here, [("door-b", there.ToBoard()), ("door-c", "{not json"), ("door-d", "null")]);

        Assert.Equal((6, 3, 12, 3, 30, 7), (farm.Waiting, farm.Running, farm.Slots, farm.BusySlots, farm.FinishedLastHour, farm.FinishedLastFiveMinutes));
        Assert.Equal([("embedded", null), ("embedded", "door-b"), ("big", "door-b")], farm.Agents.Select(a => (a.Name, a.FrontDoor)));
        Assert.Equal(["aarch64-linux"], farm.Agents[2].Systems);
        Assert.Same(here, FarmDocument.Of(here, []));

        // What another version (or a damaged row) published: missing parts filled, overflowing figures left out.
        var odd = FarmDocument.Of(here, [("door-e", """{"agents":[null,{"name":"x","slots":1}]}"""), ("door-f", """{"slots":2147483647,"agents":[]}""")]);
        Assert.Equal([("embedded", null, "agent"), ("x", "door-e", "agent")], odd.Agents.Select(a => (a.Name, a.FrontDoor, a.Kind)));
        Assert.Empty(odd.Agents[1].Systems);
        Assert.Equal(4, odd.Slots);
    }
}
