using System.Buffers;
using System.Text;
using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Nix.Wire;

namespace Kiln.Nix.Tests.Wire;

public class WireTests
{
    private delegate bool TryRead<T>(ref SequenceReader<byte> reader, out T value);

    private static byte[] Written(Action<ArrayBufferWriter<byte>> write)
    {
        var buffer = new ArrayBufferWriter<byte>();
        write(buffer);
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>
    /// Reads <paramref name="data"/> split at every point: a prefix must give "need more" without moving the reader,
    /// the whole input (split into two segments there) must give the value and consume everything.
    /// </summary>
    private static List<T> ReadAtEverySplit<T>(byte[] data, TryRead<T> read)
    {
        var values = new List<T>();
        for (var split = 0; split <= data.Length; split++)
        {
            if (split < data.Length)
            {
                var partial = new SequenceReader<byte>(new ReadOnlySequence<byte>(data, 0, split));
                Assert.False(read(ref partial, out _), $"a {split}-byte prefix of {data.Length} must not be enough");
                Assert.Equal(0, partial.Consumed);
            }

            var whole = new SequenceReader<byte>(Segments.Split(data, split, split / 2, split + 3));
            Assert.True(read(ref whole, out var value));
            Assert.True(whole.End);
            values.Add(value);
        }

        return values;
    }

    [Fact]
    public void U64_is_eight_bytes_little_endian()
    {
        var data = Written(w => WireWriter.WriteU64(w, 0x0102030405060708));
        Assert.Equal([8, 7, 6, 5, 4, 3, 2, 1], data);
        Assert.All(ReadAtEverySplit<ulong>(data, WireReader.TryReadU64), v => Assert.Equal(0x0102030405060708UL, v));
    }

    // T15/T16 of docs/nix-protocols.md: the daemon's handshake replies are bare u64s.
    [Fact]
    public void Handshake_vectors()
    {
        Assert.Equal(Convert.FromHexString("6f69786400000000" + "0a01000000000000"),
            Written(w => { WireWriter.WriteU64(w, 0x6478696f); WireWriter.WriteU64(w, 0x10a); }));
        Assert.Equal(Convert.FromHexString("cbee525400000000" + "0502000000000000"),
            Written(w => { WireWriter.WriteU64(w, 0x5452eecb); WireWriter.WriteU64(w, 0x205); }));
    }

    // T17: store paths are padded strings.
    [Fact]
    public void Store_path_vector()
    {
        var data = Written(w =>
        {
            WireWriter.WriteString(w, "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo");
            WireWriter.WriteString(w, "/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo-bar");
        });
        var expected = Convert.FromHexString("2f00000000000000")
            .Concat(Encoding.ASCII.GetBytes("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo")).Concat(new byte[1])
            .Concat(Convert.FromHexString("3300000000000000"))
            .Concat(Encoding.ASCII.GetBytes("/nix/store/g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q-foo-bar")).Concat(new byte[5]);
        Assert.Equal(expected, data);
    }

    [Theory]
    [InlineData("")]
    [InlineData("a")]
    [InlineData("12345678")]
    [InlineData("123456789")]
    [InlineData("ünïcödé 😀")]
    public void Strings_round_trip_at_every_split(string text)
    {
        var data = Written(w => WireWriter.WriteString(w, text));
        Assert.Equal(0, data.Length % 8);
        Assert.All(ReadAtEverySplit<string>(data, (ref SequenceReader<byte> r, out string v) => WireReader.TryReadString(ref r, 100, out v)),
            v => Assert.Equal(text, v));
    }

    [Fact]
    public void Collections_round_trip_at_every_split()
    {
        var paths = new[] { "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt", "/nix/store/bzj23iw9rh8fbiagnrf8q351npvrdlbi-script.sh" }
            .Select(StorePath.Parse).ToList();
        var data = Written(w =>
        {
            WireWriter.WriteStrings(w, ["b", "a", ""]);
            WireWriter.WriteStorePaths(w, paths);
            WireWriter.WriteStringMap(w, [new("z", "1"), new("a", "2")]);
        });
        var values = ReadAtEverySplit(data, (ref SequenceReader<byte> r, out (List<string>, SortedSet<StorePath>, List<KeyValuePair<string, string>>) v) =>
        {
            v = default;
            var start = r.Consumed;
            if (WireReader.TryReadStrings(ref r, WireLimits.Default, out var strings) &&
                WireReader.TryReadStorePaths(ref r, WireLimits.Default, out var set) &&
                WireReader.TryReadStringMap(ref r, WireLimits.Default, out var map))
            {
                v = (strings, set, map);
                return true;
            }

            r.Rewind(r.Consumed - start);
            return false;
        });
        Assert.All(values, v =>
        {
            Assert.Equal(["b", "a", ""], v.Item1);
            Assert.Equal(paths.Order(), v.Item2);
            Assert.Equal([new("a", "2"), new("z", "1")], v.Item3);
        });
    }

    [Fact]
    public void Booleans_other_than_zero_and_one_are_refused()
    {
        var data = Written(w => WireWriter.WriteU64(w, 2));
        Assert.Throws<WireFormatException>(() =>
        {
            var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(data));
            WireReader.TryReadBool(ref reader, out _);
        });
    }

    [Fact]
    public void Non_zero_padding_is_refused_at_every_split()
    {
        var data = Written(w => WireWriter.WriteString(w, "abc"));
        data[^1] = 1;
        for (var split = 0; split <= data.Length; split++)
        {
            Assert.Throws<WireFormatException>(() =>
            {
                var reader = new SequenceReader<byte>(Segments.Split(data, split));
                WireReader.TryReadString(ref reader, 100, out _);
            });
        }
    }

    [Fact]
    public void Limits_are_checked_before_the_data_arrives()
    {
        // Only the 8-byte length is present: a huge string or list is refused at once, nothing is allocated.
        var hugeString = Written(w => WireWriter.WriteU64(w, 1UL << 40));
        Assert.Throws<WireFormatException>(() =>
        {
            var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(hugeString));
            WireReader.TryReadString(ref reader, 1 << 20, out _);
        });
        Assert.Throws<WireFormatException>(() =>
        {
            var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(hugeString));
            WireReader.TryReadStrings(ref reader, WireLimits.Default, out _);
        });
    }

    [Fact]
    public void Strings_that_are_not_utf8_round_trip_losslessly()
    {
        var data = Written(w => WireWriter.WriteBytes(w, [0x66, 0xff, 0x66, 0xc3]));
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(data));
        Assert.True(WireReader.TryReadString(ref reader, 100, out var text));
        Assert.Equal(data, Written(w => WireWriter.WriteString(w, text)));
    }

    [Fact]
    public void A_bad_store_path_is_consumed_then_reported()
    {
        var data = Written(w => { WireWriter.WriteString(w, "/etc/passwd"); WireWriter.WriteU64(w, 7); });
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(data));
        var refused = false;
        try
        {
            WireReader.TryReadStorePath(ref reader, out _);
        }
        catch (BadStorePathException)
        {
            refused = true;
        }

        // The reader is left at the start of the bad value; the session closes the connection.
        Assert.True(refused);
        Assert.Equal(0, reader.Consumed);
    }

    [Fact]
    public void Framed_reader_consumes_nothing_when_it_needs_more()
    {
        var data = Written(w => WireWriter.WriteFrame(w, [1, 2, 3]));
        var framed = new FramedReader();
        var headerOnly = new SequenceReader<byte>(new ReadOnlySequence<byte>(data, 0, 8));
        Assert.Equal(FramedReadResult.NeedMoreData, framed.TryRead(ref headerOnly, out _));
        Assert.Equal(0, headerOnly.Consumed);
        var all = new SequenceReader<byte>(new ReadOnlySequence<byte>(data));
        Assert.Equal(FramedReadResult.Data, framed.TryRead(ref all, out var payload));
        Assert.Equal([1, 2, 3], payload.ToArray());
    }

    [Fact]
    public void List_reader_keeps_what_arrived_at_every_split()
    {
        var strings = Enumerable.Range(0, 50).Select(i => new string('x', i)).ToList();
        var data = Written(w => WireWriter.WriteStrings(w, strings));
        for (var split = 0; split <= data.Length; split++)
        {
            var list = new ListReader<string>(WireLimits.Default, (ref SequenceReader<byte> r, out string v) => WireReader.TryReadString(ref r, 100, out v));
            var first = new SequenceReader<byte>(new ReadOnlySequence<byte>(data, 0, split));
            var done = list.TryRead(ref first, out var items);
            if (!done)
            {
                var rest = new SequenceReader<byte>(new ReadOnlySequence<byte>(data, (int)first.Consumed, data.Length - (int)first.Consumed));
                Assert.True(list.TryRead(ref rest, out items));
                Assert.True(rest.End);
            }

            Assert.Equal(strings, items);
        }
    }

    [Fact]
    public void Framed_streams_decode_at_every_split()
    {
        var payload = Enumerable.Range(0, 100).Select(i => (byte)i).ToArray();
        var data = Written(w =>
        {
            WireWriter.WriteFrame(w, payload.AsSpan(0, 30));
            WireWriter.WriteFrame(w, payload.AsSpan(30, 1));
            WireWriter.WriteFrame(w, ReadOnlySpan<byte>.Empty); // not written: it would end the stream
            WireWriter.WriteFrame(w, payload.AsSpan(31));
            WireWriter.WriteFrameEnd(w);
            WireWriter.WriteU64(w, 42); // the next message
        });
        for (var split = 0; split <= data.Length; split++)
        {
            // First only `split` bytes have arrived, then the rest.
            var framed = new FramedReader();
            var received = new List<byte>();
            var consumed = 0L;
            var result = FramedReadResult.NeedMoreData;
            foreach (var available in new[] { split, data.Length })
            {
                result = Drain(framed, data, available, ref consumed, received);
                if (result == FramedReadResult.End)
                {
                    break;
                }
            }

            Assert.Equal(FramedReadResult.End, result);
            Assert.Equal(payload, received);
            Assert.Equal(100, framed.PayloadLength);
            var rest = new SequenceReader<byte>(new ReadOnlySequence<byte>(data, (int)consumed, data.Length - (int)consumed));
            Assert.True(WireReader.TryReadU64(ref rest, out var next));
            Assert.Equal(42UL, next);
        }
    }

    private static FramedReadResult Drain(FramedReader framed, byte[] data, int available, ref long consumed, List<byte> received)
    {
        var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(data, 0, available));
        reader.Advance(consumed);
        FramedReadResult result;
        while ((result = framed.TryRead(ref reader, out var chunk)) == FramedReadResult.Data)
        {
            received.AddRange(chunk.ToArray());
        }

        consumed = reader.Consumed;
        return result;
    }

    [Fact]
    public void Oversized_frames_are_refused()
    {
        var data = Written(w => WireWriter.WriteU64(w, 1UL << 40));
        Assert.Throws<WireFormatException>(() =>
        {
            var reader = new SequenceReader<byte>(new ReadOnlySequence<byte>(data));
            new FramedReader().TryRead(ref reader, out _);
        });
    }

    [Fact]
    public void Basic_derivations_round_trip_at_every_split()
    {
        var drvFile = Directory.GetFiles(Repo.Golden("drv", "store"), "*-dependent.drv").Single();
        var drvPath = StorePath.FromBaseName(Path.GetFileName(drvFile));
        var derivation = ATerm.Parse(File.ReadAllBytes(drvFile), Derivation.NameFromPath(drvPath));
        var data = Written(w => BasicDerivationWire.Write(w, derivation));
        var values = ReadAtEverySplit(data, (ref SequenceReader<byte> r, out Derivation v) =>
            BasicDerivationWire.TryRead(ref r, derivation.Name, WireLimits.Default, out v));
        Assert.All(values, parsed =>
        {
            Assert.Empty(parsed.InputDerivations);
            Assert.Equal(derivation.Outputs, parsed.Outputs);
            Assert.Equal(derivation.InputSources, parsed.InputSources);
            Assert.Equal(derivation.Arguments, parsed.Arguments);
            Assert.Equal(derivation.Environment, parsed.Environment);
            Assert.Equal(derivation.Builder, parsed.Builder);
            Assert.Equal(data, Written(w => BasicDerivationWire.Write(w, parsed)));
        });
    }
}
