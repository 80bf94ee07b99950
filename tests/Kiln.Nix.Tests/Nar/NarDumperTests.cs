using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.Tests.Support;

namespace Kiln.Nix.Tests.Nar;

/// <summary>Archives trees with Kiln and compares with NARs the real nix-store --dump made of the same trees.</summary>
public sealed class NarDumperTests : IClassFixture<NarDumperTests.Trees>
{
    private readonly Trees _trees;

    public NarDumperTests(Trees trees) => _trees = trees;

    /// <summary>The trees of Golden/make-trees.sh, built once for the class.</summary>
    public sealed class Trees : IDisposable
    {
        private readonly TempDir _temp = new();

        public Trees()
        {
            Root = _temp["trees"];
            var result = Processes.Run("bash", [Repo.Golden("make-trees.sh"), Root]);
            Assert.True(result.ExitCode == 0, result.Stderr);
        }

        public string Root { get; }

        public void Dispose() => _temp.Dispose();
    }

    public static TheoryData<string> Entries() =>
        new(File.ReadAllLines(Repo.Golden("nar", "hashes.txt")).Select(l => l.Split(' ')[0]));

    [Theory]
    [MemberData(nameof(Entries))]
    public void Dumps_trees_exactly_as_nix_store_dump_did(string entry)
    {
        using var output = new MemoryStream();
        var size = NarDumper.Dump(Path.Combine(_trees.Root, entry), output);
        var golden = File.ReadAllBytes(Repo.Golden("nar", entry + ".nar"));
        Assert.Equal(golden.Length, size);
        Assert.Equal(golden, output.ToArray());
    }

    [Theory]
    [MemberData(nameof(Entries))]
    public void Dumps_to_a_file_descriptor_with_kernel_copies_identically(string entry)
    {
        using var temp = new TempDir();
        using (var handle = File.OpenHandle(temp["out.nar"], FileMode.CreateNew, FileAccess.Write))
        {
            NarDumper.Dump(Path.Combine(_trees.Root, entry), handle);
        }

        Assert.Equal(File.ReadAllBytes(Repo.Golden("nar", entry + ".nar")), File.ReadAllBytes(temp["out.nar"]));
    }

    [Theory]
    [MemberData(nameof(Entries))]
    public void Hashes_trees_as_nix_hash_did(string entry)
    {
        var line = File.ReadAllLines(Repo.Golden("nar", "hashes.txt")).Single(l => l.StartsWith(entry + " ", StringComparison.Ordinal)).Split(' ');
        using var hashing = new HashingStream(NixHashAlgorithm.Sha256);
        NarDumper.Dump(Path.Combine(_trees.Root, entry), hashing);
        Assert.Equal(long.Parse(line[3], System.Globalization.CultureInfo.InvariantCulture), hashing.BytesWritten);
        var hash = hashing.Finish();
        Assert.Equal(line[1], hash.ToNix32());
        Assert.Equal(line[2], hash.ToBase16());
    }

    [Theory]
    [MemberData(nameof(Entries))]
    public void Restores_golden_archives_to_trees_that_dump_back_identically(string entry)
    {
        using var temp = new TempDir();
        var golden = File.ReadAllBytes(Repo.Golden("nar", entry + ".nar"));
        NarExtractor.Restore(new MemoryStream(golden), temp["restored"]);
        using var output = new MemoryStream();
        NarDumper.Dump(temp["restored"], output);
        Assert.Equal(golden, output.ToArray());
    }

    [Fact]
    public void A_writer_disposed_twice_gives_its_buffer_back_once()
    {
        // The writer's buffer is the shared pool's: given back twice, two later writers would share one array, and
        // what one buffered would be overwritten by the other before it was written out.
        static byte[] Archive(string target, Action<NarWriter>? between = null)
        {
            using var output = new MemoryStream();
            using (var writer = new NarWriter(output))
            {
                writer.Symlink(Encoding.UTF8.GetBytes(target));
                between?.Invoke(writer);
                writer.Flush();
            }

            return output.ToArray();
        }

        var expectedA = Archive("aaaa");
        var expectedB = Archive("bbbb");
        var once = new NarWriter(Stream.Null);
        once.Dispose();
        once.Dispose();
        byte[]? b = null;
        var a = Archive("aaaa", between: _ => b = Archive("bbbb"));
        Assert.Equal(expectedA, a);
        Assert.Equal(expectedB, b);
    }

    [Fact]
    public void Refuses_special_files()
    {
        using var temp = new TempDir();
        var fifo = temp["fifo"];
        Assert.Equal(0, Processes.Run("mkfifo", [fifo]).ExitCode);
        var error = Assert.Throws<IOException>(() => NarDumper.Dump(fifo, Stream.Null));
        Assert.Contains("unsupported type", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Refuses_to_dump_deeper_than_nix_allows()
    {
        using var temp = new TempDir();
        var path = temp["deep"];
        for (var i = 0; i < 64; i++)
        {
            path = Path.Combine(path, "d");
        }

        Directory.CreateDirectory(path);
        var error = Assert.Throws<IOException>(() => NarDumper.Dump(temp["deep"], Stream.Null));
        Assert.Contains("maximum NAR directory depth of 64", error.Message, StringComparison.Ordinal);
        NarDumper.Dump(Path.Combine(temp["deep"], "d"), Stream.Null);
    }

    [Fact]
    public void Refuses_a_restore_over_an_existing_path()
    {
        using var temp = new TempDir();
        File.WriteAllText(temp["exists"], "keep me");
        var nar = NarBuilder.Start().File("x").ToArray();
        Assert.Throws<IOException>(() => NarExtractor.Restore(new MemoryStream(nar), temp["exists"]));
        Assert.Equal("keep me", File.ReadAllText(temp["exists"]));
        File.CreateSymbolicLink(temp["dangling"], temp["nowhere"]);
        Assert.Throws<IOException>(() => NarExtractor.Restore(new MemoryStream(nar), temp["dangling"]));
        Assert.False(File.Exists(temp["nowhere"]));
    }

    /// <summary>Random trees (fixed seed) that no test was written for, archived by both Kiln and the real Nix.</summary>
    [Fact]
    public void Agrees_with_nix_store_dump_on_random_trees()
    {
        NixTool.Require();
        var random = new Random(20261121);
        for (var i = 0; i < 12; i++)
        {
            using var temp = new TempDir();
            var root = temp["tree"];
            RandomTree.Create(random, root, depth: 0);
            using var ours = new MemoryStream();
            NarDumper.Dump(root, ours);
            var theirs = NixTool.Run("nix-store", "--dump", root).Stdout;
            Assert.Equal(theirs, ours.ToArray());

            // And the listing, through Nix's own NAR reader.
            File.WriteAllBytes(temp["tree.nar"], theirs);
            var nixListing = NixTool.Run("nix", "nar", "ls", "--json", "-R", temp["tree.nar"], "/").StdoutText;
            var writer = new StringWriter();
            NarListing.WriteListing(new MemoryStream(theirs), writer, indent: false);
            Assert.Equal(nixListing.Trim(), writer.ToString());
        }
    }
}

/// <summary>Builds random directory trees: unicode names, every object type, sizes around padding and buffer edges.</summary>
public static class RandomTree
{
    private static readonly string[] NameParts = ["a", "B", "z", "0", "-", "_", ".x", "ü", "日本", "😀", " ", "name", "Zz", "\ue000"];

    public static void Create(Random random, string path, int depth)
    {
        var kind = depth == 0 ? 0 : random.Next(depth > 4 ? 1 : 0, 5);
        switch (kind)
        {
            case 0:
                Directory.CreateDirectory(path);
                var names = new HashSet<string>(StringComparer.Ordinal);
                var count = random.Next(0, depth == 0 ? 12 : 6);
                for (var i = 0; i < count; i++)
                {
                    var name = string.Concat(Enumerable.Range(0, random.Next(1, 4)).Select(_ => NameParts[random.Next(NameParts.Length)]));
                    if (name is "." or ".." || !names.Add(name))
                    {
                        continue;
                    }

                    Create(random, Path.Combine(path, name), depth + 1);
                }

                break;
            case 1:
            case 2:
            case 3:
                var size = random.Next(4) switch
                {
                    0 => random.Next(0, 17),
                    1 => random.Next(0, 5000),
                    2 => (random.Next(1, 4) << 16) + random.Next(-9, 9),
                    _ => random.Next(0, 300_000),
                };
                var bytes = new byte[Math.Max(0, size)];
                random.NextBytes(bytes);
                File.WriteAllBytes(path, bytes);
                File.SetUnixFileMode(path, random.Next(2) == 0 ? (UnixFileMode)Convert.ToInt32("644", 8) : (UnixFileMode)Convert.ToInt32("755", 8));
                break;
            default:
                var target = random.Next(3) switch
                {
                    0 => "relative/target",
                    1 => "/nix/store/" + new string('a', random.Next(1, 40)),
                    _ => Encoding.UTF8.GetString(Encoding.UTF8.GetBytes("ünï" + random.Next())),
                };
                File.CreateSymbolicLink(path, target);
                break;
        }
    }
}
