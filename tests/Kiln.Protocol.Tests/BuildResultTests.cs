using System.Buffers.Binary;
using System.IO.Pipelines;
using Kiln.Protocol.Wire;
using Kiln.Protocol.Worker;

namespace Kiln.Protocol.Tests;

/// <summary>What a BuildResult puts on the wire where Nix reads signed numbers.</summary>
public class BuildResultTests
{
    // Nix reads a result's start and stop time as time_t and its CPU times as signed microseconds, and refuses the whole
    // reply when a value does not fit ("serialised integer … is too large for type 'l'"): a negative one (a build that
    // never ran, a clock before 1970, an agent's bad report) must go out as 0, never as a huge unsigned number.
    [Fact]
    public async Task Negative_times_go_out_as_zero_in_both_protocols()
    {
        var result = new BuildResult
        {
            Status = BuildStatus.MiscFailure,
            ErrorMessage = "cancelled",
            StartTime = -62_135_596_800, // DateTimeOffset's default, in Unix seconds
            StopTime = -1,
            CpuUser = TimeSpan.FromTicks(-10),
            CpuSystem = TimeSpan.FromSeconds(2),
        };

        var worker = await WrittenAsync(output => result.Write(output, new ProtocolVersion(1, 38)));
        // status, error ("cancelled": 9 bytes, padded to 16), times built, non-deterministic, start, stop, cpu user, cpu system
        var after = 8 + 8 + 16 + 8 + 8;
        Assert.Equal([0UL, 0UL, 1UL, 0UL, 1UL, 2_000_000UL], Words(worker, after, 6));

        var serve = await WrittenAsync(output => result.WriteServe(output, 6));
        Assert.Equal([0UL, 0UL], Words(serve, after, 2));
    }

    private static ulong[] Words(byte[] bytes, int offset, int count) =>
        [.. Enumerable.Range(0, count).Select(i => BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(offset + (8 * i), 8)))];

    private static async Task<byte[]> WrittenAsync(Action<WireOutput> write)
    {
        var pipe = new Pipe();
        var output = new WireOutput(pipe.Writer);
        write(output);
        await output.FlushAsync(default);
        await pipe.Writer.CompleteAsync();
        using var bytes = new MemoryStream();
        await pipe.Reader.AsStream().CopyToAsync(bytes);
        return bytes.ToArray();
    }
}
