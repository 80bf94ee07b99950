using Kiln.Nix.Nar;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Nar;

public class NarParserTests
{
    public static TheoryData<string> GoldenNars() =>
        new(Directory.GetFiles(Repo.Golden("nar"), "*.nar").Select(Path.GetFileName).Order()!);

    private static byte[] Golden(string file) => File.ReadAllBytes(Repo.Golden("nar", file));

    // T4 of docs/nix-protocols.md: the 120-byte NAR of a file containing "hello\n".
    [Fact]
    public void Parses_the_smallest_file_archive()
    {
        var nar = Golden("hello.txt.nar");
        Assert.Equal(120, nar.Length);
        using var visitor = new RecordingVisitor();
        var parser = new NarParser(visitor);
        Assert.Equal(120, parser.Feed(nar));
        parser.Finish();
        Assert.Equal(["file exec=False size=6 offset=96", "contents " + Convert.ToHexString(System.Security.Cryptography.SHA256.HashData("hello\n"u8))], visitor.Events);
    }

    [Theory]
    [MemberData(nameof(GoldenNars))]
    public void Re_emits_golden_archives_byte_for_byte(string file)
    {
        var nar = Golden(file);
        using var output = new MemoryStream();
        using (var writer = new NarWriter(output))
        {
            Assert.Equal(nar.Length, NarReading.Parse(new MemoryStream(nar), writer));
        }

        Assert.Equal(nar, output.ToArray());
    }

    [Theory]
    [MemberData(nameof(GoldenNars))]
    public void Gives_the_same_events_at_every_split_point(string file)
    {
        var nar = Golden(file);
        var expected = Parse(nar, [nar.Length]);

        // Every split point, except deep inside file contents, where the parser is only passing bytes through and
        // a split merely divides one Contents call (one in 4099 of those is still tried).
        var contents = new ContentRanges();
        NarReading.Parse(new MemoryStream(nar), contents);
        var tried = 0;
        for (var split = 0; split <= nar.Length; split++)
        {
            if (contents.IsDeepInside(split) && split % 4099 != 0)
            {
                continue;
            }

            Assert.Equal(expected, Parse(nar, [split, nar.Length - split]));
            tried++;
        }

        Assert.True(tried >= Math.Min(nar.Length, 8192));
        Assert.Equal(expected, Parse(nar, Enumerable.Repeat(1, nar.Length).ToArray()));
    }

    private static List<string> Parse(byte[] nar, int[] chunks)
    {
        using var visitor = new RecordingVisitor();
        var parser = new NarParser(visitor);
        var offset = 0;
        foreach (var chunk in chunks)
        {
            Assert.Equal(chunk, parser.Feed(nar.AsSpan(offset, chunk)));
            offset += chunk;
        }

        parser.Finish();
        Assert.Equal(nar.Length, parser.Position);
        return [.. visitor.Events];
    }

    [Fact]
    public void Stops_at_the_end_of_the_archive_and_reports_what_it_used()
    {
        var nar = Golden("t8.nar");
        var stream = nar.Concat(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8, 9 }).ToArray();
        var parser = new NarParser(new NarVisitor());
        Assert.Equal(nar.Length, parser.Feed(stream));
        Assert.True(parser.IsComplete);
        Assert.Equal(0, parser.Feed(stream.AsSpan(nar.Length)));
    }

    [Fact]
    public void Never_buffers_file_contents()
    {
        // A 4 MiB file fed in 64 KiB chunks reaches the visitor in chunks no larger than those fed.
        var contents = new string('x', 4 << 20);
        var nar = NarBuilder.Start().File(contents).ToArray();
        var visitor = new MaxChunkVisitor();
        var parser = new NarParser(visitor);
        for (var offset = 0; offset < nar.Length; offset += 65536)
        {
            parser.Feed(nar.AsSpan(offset, Math.Min(65536, nar.Length - offset)));
        }

        parser.Finish();
        Assert.Equal(4 << 20, visitor.Total);
        Assert.True(visitor.Largest <= 65536);
    }

    private sealed class ContentRanges : NarVisitor
    {
        private readonly List<(long Start, long End)> _ranges = [];

        public override void RegularFile(bool executable, long size, long contentsOffset) => _ranges.Add((contentsOffset, contentsOffset + size));

        public bool IsDeepInside(long offset) => _ranges.Any(r => offset > r.Start + 16 && offset < r.End - 16);
    }

    private sealed class MaxChunkVisitor : NarVisitor
    {
        public long Total { get; private set; }

        public int Largest { get; private set; }

        public override void Contents(ReadOnlySpan<byte> data)
        {
            Total += data.Length;
            Largest = Math.Max(Largest, data.Length);
        }
    }
}
