using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// 20.2 against a live server: a chain of 100,000 paths, each referring to the one before, goes into <c>kiln serve</c>
/// over SSH (<c>nix-store --serve --write</c>'s ImportPaths, as an <c>ssh://</c> client of a pre-2.5 server sends
/// them), and comes back out: its closure from the top (QueryClosure) and all of it in the export format, references
/// first (ExportPaths). A recursive walk of either would overflow the stack long before the end of the chain.
/// </summary>
public class DeepChainTests(ITestOutputHelper output)
{
    private const ulong ServeMagic = 0x390c9deb;
    private const ulong ExportMagic = 0x4558494e;

    private static readonly int Depth = int.TryParse(Environment.GetEnvironmentVariable("KILN_CHAIN_PATHS"), out var n) ? n : 100_000;

    [Fact]
    public void A_chain_of_100000_paths_goes_in_and_comes_out_whole_over_ssh()
    {
        var client = NixClient.For("2.8.0");
        using var kiln = new KilnProcess(ssh: true);
        var alice = SshTests.NewLogin(client, kiln, "alice");

        // Text paths (as builtins.toFile makes): each file names the path before it, so its reference is real.
        var chain = new List<(StorePath Path, byte[] Nar)>(Depth);
        for (var i = 0; i < Depth; i++)
        {
            var contents = Encoding.UTF8.GetBytes(i == 0 ? "the start\n" : $"after {chain[i - 1].Path.FullPath}\n");
            var references = i == 0 ? [] : new[] { chain[i - 1].Path };
            var path = StorePathComputer.MakeTextPath($"chain-{i}", NixHash.Compute(NixHashAlgorithm.Sha256, contents), references);
            chain.Add((path, Nar(contents)));
        }

        var request = new Wire();
        request.U64(ServeMagic).U64(0x205);
        request.U64(4); // ImportPaths
        for (var i = 0; i < Depth; i++)
        {
            request.U64(1).Raw(chain[i].Nar).U64(ExportMagic).Str(chain[i].Path.FullPath);
            request.Strs(i == 0 ? [] : [chain[i - 1].Path.FullPath]).Str("").U64(0);
        }

        request.U64(0);
        request.U64(7).U64(0).Strs(chain[^1].Path.FullPath); // QueryClosure of the top
        request.U64(5).U64(0).Strs([.. chain.Select(c => c.Path.FullPath).Reverse()]); // ExportPaths, top first

        // The reply's length is known: the client keeps its end open until it has all of it (a client that closes
        // its input has hung up, for Kiln as for Nix's daemon, and the request it waits for is cancelled).
        var expected = 8 + 8 + 8 + (8 + chain.Sum(c => Padded(c.Path.FullPath.Length))) +
            chain.Select((c, i) => 8 + c.Nar.Length + 8 + Padded(c.Path.FullPath.Length) + 8 + (i == 0 ? 0 : Padded(chain[i - 1].Path.FullPath.Length)) + 8 + 8).Sum() + 8;
        var watch = Stopwatch.StartNew();
        var options = alice.Environment[1]["NIX_SSHOPTS=".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var (stdout, stderr) = Converse([.. options, "kiln@127.0.0.1", "nix-store", "--serve", "--write"], request.ToArray(), expected);
        output.WriteLine($"{Depth} paths in, closure and export out: {watch.Elapsed.TotalSeconds:F1} s, {request.Length >> 20} MiB in, {stdout.Length >> 20} MiB out; " +
            $"kiln serve's peak RSS {kiln.PeakMemoryKib() / 1024} MiB");
        Assert.True(stderr.Length == 0 && stdout.Length == expected, $"{stdout.Length} of {expected} bytes: {stderr}\n{kiln.Log}");

        var reply = new Reader(stdout);
        Assert.Equal(0x5452eecbUL, reply.U64());
        reply.U64(); // the server's version
        Assert.Equal(1UL, reply.U64()); // imported
        var closure = reply.Strings();
        Assert.Equal(chain.Select(c => c.Path.FullPath).Order(StringComparer.Ordinal), closure);

        // The export: every path once, each after the one it refers to, with its NAR intact.
        for (var i = 0; i < Depth; i++)
        {
            Assert.Equal(1UL, reply.U64());
            Assert.True(reply.Take(chain[i].Nar.Length).SequenceEqual(chain[i].Nar), $"the NAR of path {i}");
            Assert.Equal(ExportMagic, reply.U64());
            Assert.Equal(chain[i].Path.FullPath, reply.Str());
            Assert.Equal(i == 0 ? [] : [chain[i - 1].Path.FullPath], reply.Strings());
            reply.Str(); // deriver
            Assert.Equal(0UL, reply.U64());
        }

        Assert.Equal(0UL, reply.U64());
        Assert.True(reply.AtEnd);
        Assert.DoesNotContain("Stack overflow", kiln.Log, StringComparison.Ordinal);
    }

    private static int Padded(int length) => 8 + ((length + 7) & ~7);

    // Runs ssh with the request on its stdin, which stays open until the reply has come (or ssh ended).
    private static (byte[] Stdout, string Stderr) Converse(string[] arguments, byte[] request, long expected)
    {
        var info = new ProcessStartInfo("ssh") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in arguments)
        {
            info.ArgumentList.Add(argument);
        }

        using var process = Process.Start(info)!;
        var errors = process.StandardError.ReadToEndAsync();
        var writing = Task.Run(async () =>
        {
            await process.StandardInput.BaseStream.WriteAsync(request);
            await process.StandardInput.BaseStream.FlushAsync();
        });
        using var received = new MemoryStream();
        var buffer = new byte[1 << 16];
        var deadline = Stopwatch.StartNew();
        while (received.Length < expected && deadline.Elapsed < TimeSpan.FromMinutes(10))
        {
            var read = process.StandardOutput.BaseStream.Read(buffer);
            if (read == 0)
            {
                break;
            }

            received.Write(buffer, 0, read);
        }

        writing.Wait(TimeSpan.FromMinutes(1));
        process.StandardInput.Close();
        if (!process.WaitForExit(TimeSpan.FromSeconds(30)))
        {
            process.Kill();
        }

        return (received.ToArray(), errors.Result);
    }

    // A NAR of one regular file.
    private static byte[] Nar(byte[] contents) =>
        new Wire().Str("nix-archive-1").Str("(").Str("type").Str("regular").Str("contents").Bytes(contents).Str(")").ToArray();

    private sealed class Wire
    {
        private readonly System.Buffers.ArrayBufferWriter<byte> _buffer = new(1 << 16);

        public long Length => _buffer.WrittenCount;

        public Wire U64(ulong value)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(_buffer.GetSpan(8), value);
            _buffer.Advance(8);
            return this;
        }

        public Wire Bytes(byte[] value)
        {
            U64((ulong)value.Length);
            _buffer.Write<byte>(value);
            _buffer.Write<byte>(new byte[(8 - (value.Length % 8)) % 8]);
            return this;
        }

        public Wire Str(string value) => Bytes(Encoding.UTF8.GetBytes(value));

        public Wire Strs(params string[] values)
        {
            U64((ulong)values.Length);
            foreach (var value in values)
            {
                Str(value);
            }

            return this;
        }

        public Wire Raw(byte[] value)
        {
            _buffer.Write<byte>(value);
            return this;
        }

        public byte[] ToArray() => _buffer.WrittenSpan.ToArray();
    }

    private sealed class Reader(byte[] data)
    {
        private int _at;

        public bool AtEnd => _at == data.Length;

        public ulong U64()
        {
            var value = BinaryPrimitives.ReadUInt64LittleEndian(data.AsSpan(_at, 8));
            _at += 8;
            return value;
        }

        public ReadOnlySpan<byte> Take(int length)
        {
            var span = data.AsSpan(_at, length);
            _at += length;
            return span;
        }

        public string Str()
        {
            var length = (int)U64();
            var value = Encoding.UTF8.GetString(Take(length));
            _at += (8 - (length % 8)) % 8;
            return value;
        }

        public List<string> Strings() => Enumerable.Range(0, (int)U64()).Select(_ => Str()).ToList();
    }
}
