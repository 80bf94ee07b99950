using System.Text;
using Kiln.Nix.References;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Tests.References;

public class ReferenceScannerTests
{
    private static readonly StorePath Hello = StorePath.Parse("/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt");
    private static readonly StorePath Script = StorePath.Parse("/nix/store/bzj23iw9rh8fbiagnrf8q351npvrdlbi-script.sh");
    private static readonly StorePath Absent = StorePath.Parse("/nix/store/0r44ha39vj6hfc5b9m87rbvszw9ymffc-foo.drv");

    [Fact]
    public void Finds_hash_parts_at_every_split_point()
    {
        var data = Encoding.UTF8.GetBytes($"#!/bin/sh\nexec {Hello}/bin/x \"$@\" # {Script.HashPart}");
        for (var split = 0; split <= data.Length; split++)
        {
            var scanner = new ReferenceScanner([Hello, Script, Absent]);
            scanner.Scan(data.AsSpan(0, split));
            scanner.Scan(data.AsSpan(split));
            Assert.Equal(new HashSet<StorePath> { Hello, Script }, scanner.Found.ToHashSet());
        }
    }

    [Fact]
    public void Finds_hash_parts_fed_one_byte_at_a_time()
    {
        var data = Encoding.UTF8.GetBytes("xx" + Hello.HashPart + "yy");
        var scanner = new ReferenceScanner([Hello]);
        foreach (var b in data)
        {
            scanner.Scan([b]);
        }

        Assert.Contains(Hello, scanner.Found);
    }

    [Fact]
    public void Finds_a_hash_part_inside_a_longer_run_of_digits()
    {
        var data = Encoding.UTF8.GetBytes("0123" + Hello.HashPart + "abcd");
        Assert.Contains(Hello, ReferenceScanner.ScanStream(new MemoryStream(data), [Hello]));
    }

    [Fact]
    public void Does_not_match_a_hash_part_broken_by_another_byte()
    {
        var hash = Hello.HashPart;
        var data = Encoding.UTF8.GetBytes(hash[..16] + "\n" + hash[16..] + hash[..31] + "E");
        Assert.Empty(ReferenceScanner.ScanStream(new MemoryStream(data), [Hello]));
    }

    [Fact]
    public void Agrees_with_a_naive_search_on_random_data()
    {
        var random = new Random(99);
        var candidates = Enumerable.Range(0, 50).Select(i =>
        {
            var hash = new byte[20];
            random.NextBytes(hash);
            return StorePath.FromHash(hash, "p" + i);
        }).ToList();
        for (var round = 0; round < 50; round++)
        {
            // Random bytes biased towards Nix32 digits, with some candidates planted at random offsets.
            var data = new byte[random.Next(0, 20_000)];
            for (var i = 0; i < data.Length; i++)
            {
                data[i] = random.Next(4) == 0 ? (byte)random.Next(256) : (byte)Kiln.Nix.Hashing.Nix32.Alphabet[random.Next(32)];
            }

            for (var k = random.Next(0, 6); k > 0 && data.Length > 32; k--)
            {
                var planted = candidates[random.Next(candidates.Count)];
                Encoding.ASCII.GetBytes(planted.HashPart).CopyTo(data, random.Next(0, data.Length - 32));
            }

            var text = Encoding.Latin1.GetString(data);
            var expected = candidates.Where(c => text.Contains(c.HashPart, StringComparison.Ordinal)).ToHashSet();

            var scanner = new ReferenceScanner(candidates);
            var offset = 0;
            while (offset < data.Length)
            {
                var chunk = Math.Min(random.Next(1, 100), data.Length - offset);
                scanner.Scan(data.AsSpan(offset, chunk));
                offset += chunk;
            }

            Assert.Equal(expected, scanner.Found.ToHashSet());
        }
    }
}
