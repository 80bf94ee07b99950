using Kiln.Nix.Nar;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Nar;

/// <summary>
/// A corpus of archives that must be refused, each with the reason. <c>NixRejects</c> marks those the real Nix 2.8
/// also refuses (the rest are limits and checks that newer Nix or Kiln add), which the live test confirms.
/// </summary>
public class HostileNarTests
{
    public sealed record HostileNar(string Name, byte[] Bytes, NarError Error, bool NixRejects)
    {
        public override string ToString() => Name;
    }

    private static readonly Dictionary<string, HostileNar> Cases = Build().ToDictionary(c => c.Name);

    public static TheoryData<string> Names() => new(Cases.Keys.Order());

    public static TheoryData<string> NamesNixRejects() => new(Cases.Values.Where(c => c.NixRejects).Select(c => c.Name).Order());

    private static IEnumerable<HostileNar> Build()
    {
        static NarBuilder S() => NarBuilder.Start();
        static NarBuilder Dir() => S().OpenDirectory();

        yield return new("empty input", [], NarError.Truncated, true);
        yield return new("wrong magic", new NarBuilder().Str("nix-archive-2").File("x").ToArray(), NarError.NotAnArchive, true);
        yield return new("huge magic length", new NarBuilder().U64(1UL << 40).ToArray(), NarError.NotAnArchive, true);
        yield return new("text instead of an archive", "#!/bin/sh\necho not a nar\n"u8.ToArray(), NarError.NotAnArchive, true);
        yield return new("magic with non-zero padding", new NarBuilder().Raw("nix-archive-1"u8, 0xff).File("x").ToArray(), NarError.NotAnArchive, true);
        yield return new("missing open paren", S().Tokens("type", "regular", "contents", "x", ")").ToArray(), NarError.UnexpectedToken, true);
        yield return new("unknown type", S().Tokens("(", "type", "fifo", ")").ToArray(), NarError.UnknownType, true);
        yield return new("missing type tag", S().Tokens("(", "kind", "regular").ToArray(), NarError.UnexpectedToken, true);
        yield return new("non-empty executable marker", S().Tokens("(", "type", "regular", "executable", "yes", "contents", "x", ")").ToArray(), NarError.NonEmptyExecutableMarker, true);
        yield return new("regular without contents tag", S().Tokens("(", "type", "regular", "data", "x", ")").ToArray(), NarError.UnexpectedToken, true);
        yield return new("second type field", S().Tokens("(", "type", "regular", "type", "symlink").ToArray(), NarError.UnexpectedToken, true);
        yield return new("contents with non-zero padding", S().Tokens("(", "type", "regular", "contents").Raw("abc"u8, 1).Str(")").ToArray(), NarError.NonZeroPadding, true);
        yield return new("token with non-zero padding", S().Raw("("u8, 0x20).Tokens("type", "regular", "contents", "x", ")").ToArray(), NarError.NonZeroPadding, true);
        yield return new("file not closed", S().Tokens("(", "type", "regular", "contents", "x", "(").ToArray(), NarError.UnexpectedToken, true);
        yield return new("empty entry name", Dir().Entry("", n => n.File("x")).CloseDirectory().ToArray(), NarError.InvalidName, true);
        yield return new("entry named dot", Dir().Entry(".", n => n.File("x")).CloseDirectory().ToArray(), NarError.InvalidName, true);
        yield return new("entry named dot-dot", Dir().Entry("..", n => n.Symlink("/etc")).CloseDirectory().ToArray(), NarError.InvalidName, true);
        yield return new("entry name with slash", Dir().Entry("../../escape", n => n.File("x")).CloseDirectory().ToArray(), NarError.InvalidName, true);
        yield return new("entry name with NUL", Dir().Entry("a\0b", n => n.File("x")).CloseDirectory().ToArray(), NarError.InvalidName, true);
        yield return new("unsorted entries", Dir().Entry("b", n => n.File("x")).Entry("a", n => n.File("y")).CloseDirectory().ToArray(), NarError.UnsortedEntries, false); // Nix 2.8's check compares against a fresh empty string: it never fires.
        yield return new("duplicate entries", Dir().Entry("a", n => n.File("x")).Entry("a", n => n.File("y")).CloseDirectory().ToArray(), NarError.DuplicateEntry, true);
        yield return new("symlink then directory of the same name",
            Dir().Entry("a", n => n.Symlink("/tmp")).Entry("a", n => n.OpenDirectory().Entry("owned", f => f.File("x")).CloseDirectory()).CloseDirectory().ToArray(),
            NarError.DuplicateEntry, true);
        yield return new("empty symlink target", S().Symlink("").ToArray(), NarError.InvalidSymlinkTarget, false);
        yield return new("symlink target with NUL", S().Symlink("/etc\0passwd").ToArray(), NarError.InvalidSymlinkTarget, false);
        yield return new("symlink without target tag", S().Tokens("(", "type", "symlink", "path", "x", ")").ToArray(), NarError.UnexpectedToken, true);
        yield return new("name longer than 255 bytes", Dir().Entry(new string('n', 256), n => n.File("x")).CloseDirectory().ToArray(), NarError.StringTooLong, false);
        yield return new("target longer than 4095 bytes", S().Symlink(new string('t', 4096)).ToArray(), NarError.StringTooLong, false);
        yield return new("huge tag length", S().U64(1UL << 62).ToArray(), NarError.StringTooLong, false);
        yield return new("unknown directory field", Dir().Tokens("member", "(").ToArray(), NarError.UnexpectedToken, true);
        yield return new("entry without node tag", Dir().Tokens("entry", "(", "name", "a", "child").ToArray(), NarError.UnexpectedToken, true);
        yield return new("entry not closed", Dir().OpenEntry("a").File("x").Str("entry").ToArray(), NarError.UnexpectedToken, true);
        yield return new("truncated contents", S().Tokens("(", "type", "regular", "contents").U64(1000).Bytes(1, 2, 3).ToArray(), NarError.Truncated, true);
        yield return new("huge file size with no data", S().Tokens("(", "type", "regular", "contents").U64(1UL << 62).ToArray(), NarError.Truncated, true);
        yield return new("file size beyond 2^63", S().Tokens("(", "type", "regular", "contents").U64(ulong.MaxValue).ToArray(), NarError.UnexpectedToken, false);
        yield return new("truncated inside a directory", Dir().Entry("a", n => n.File("x")).ToArray(), NarError.Truncated, true);
        yield return new("trailing data", S().File("x").Bytes(0, 0, 0, 0, 0, 0, 0, 0).ToArray(), NarError.TrailingData, false);

        var deep = S();
        for (var i = 0; i < 64; i++)
        {
            deep = deep.OpenDirectory().OpenEntry("d");
        }

        yield return new("65 levels of nesting", deep.File("x").ToArray(), NarError.TooDeep, false);
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void Is_refused_with_the_right_error(string name)
    {
        var hostile = Cases[name];
        var error = Assert.Throws<NarException>(() => NarReading.Parse(new MemoryStream(hostile.Bytes), new NarVisitor()));
        Assert.Equal(hostile.Error, error.Error);
        Assert.StartsWith("bad archive: ", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void Is_refused_however_it_is_split(string name)
    {
        var hostile = Cases[name];
        for (var split = 0; split <= hostile.Bytes.Length; split += Math.Max(1, hostile.Bytes.Length / 97))
        {
            var parser = new NarParser(new NarVisitor());
            var error = Assert.Throws<NarException>(() =>
            {
                var used = parser.Feed(hostile.Bytes.AsSpan(0, split));
                used += parser.Feed(hostile.Bytes.AsSpan(used));
                if (used < hostile.Bytes.Length)
                {
                    throw new NarException(NarError.TrailingData, "trailing", used);
                }

                parser.Finish();
            });
            Assert.Equal(hostile.Error, error.Error);
        }
    }

    [Theory]
    [MemberData(nameof(Names))]
    public void Leaves_nothing_behind_when_extracted(string name)
    {
        using var temp = new TempDir();
        var target = temp["out"];
        Assert.ThrowsAny<NixFormatException>(() => NarExtractor.Restore(new MemoryStream(Cases[name].Bytes), target));
        Assert.False(Path.Exists(target));
        Assert.Empty(Directory.GetFileSystemEntries(temp.Path));
    }

    [Fact]
    public void A_failed_restore_never_removes_what_someone_else_created_at_the_target()
    {
        using var temp = new TempDir();
        var target = temp["out"];
        var nar = NarBuilder.Start().OpenDirectory().Entry("a", n => n.File("x")).CloseDirectory().ToArray();

        // The target appears between the existence check and the extraction (another restore of the same path).
        var racing = new RacingStream(nar, () =>
        {
            Directory.CreateDirectory(target);
            File.WriteAllText(Path.Combine(target, "precious"), "keep");
        });
        Assert.Throws<IOException>(() => NarExtractor.Restore(racing, target));
        Assert.Equal("keep", File.ReadAllText(Path.Combine(target, "precious")));
    }

    private sealed class RacingStream(byte[] data, Action onFirstRead) : MemoryStream(data)
    {
        private bool _raced;

        public override int Read(byte[] buffer, int offset, int count)
        {
            if (!_raced)
            {
                _raced = true;
                onFirstRead();
            }

            return base.Read(buffer, offset, count);
        }
    }

    [Fact]
    public void Allows_exactly_64_levels()
    {
        var deep = NarBuilder.Start();
        for (var i = 0; i < 63; i++)
        {
            deep = deep.OpenDirectory().OpenEntry("d");
        }

        deep = deep.File("x");
        for (var i = 0; i < 63; i++)
        {
            deep = deep.CloseEntry().CloseDirectory();
        }

        Assert.True(NarReading.Parse(new MemoryStream(deep.ToArray()), new NarVisitor()) > 0);
    }

    [Fact]
    public void A_symlink_in_the_archive_cannot_redirect_writes_outside_the_target()
    {
        using var temp = new TempDir();
        var victim = Directory.CreateDirectory(temp["victim"]).FullName;
        var nar = NarBuilder.Start().OpenDirectory()
            .Entry("a", n => n.Symlink(victim))
            .Entry("a", n => n.OpenDirectory().Entry("owned", f => f.File("pwned")).CloseDirectory())
            .CloseDirectory().ToArray();
        Assert.Throws<NarException>(() => NarExtractor.Restore(new MemoryStream(nar), temp["out"]));
        Assert.Empty(Directory.GetFileSystemEntries(victim));
        Assert.False(Path.Exists(temp["out"]));
    }

    [Theory]
    [MemberData(nameof(NamesNixRejects))]
    public void Real_nix_agrees_where_it_checks_the_same_thing(string name)
    {
        NixTool.Require();
        var hostile = Cases[name];

        using var temp = new TempDir();
        var result = NixTool.Try("nix-store", hostile.Bytes, "--restore", temp["out"]);
        Assert.NotEqual(0, result.ExitCode);
    }
}
