using System.IO.Pipelines;
using Kiln.Protocol.Worker;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Protocol.Tests;

/// <summary>Runs a worker session over in-memory pipes on a scripted client byte stream.</summary>
public static class SessionHarness
{
    public sealed record Outcome(byte[] Output, SessionSummary Summary);

    /// <summary>Feeds <paramref name="input"/> (in chunks of <paramref name="chunk"/> bytes), then ends it, and collects everything the session wrote.</summary>
    public static async Task<Outcome> RunAsync(IWorkerStore store, byte[] input, int chunk = int.MaxValue, WorkerSessionOptions? options = null)
    {
        var toServer = new Pipe();
        var fromServer = new Pipe();
        var session = new WorkerSession(store, options ?? new WorkerSessionOptions(), NullLogger.Instance);
        var run = session.RunAsync(toServer.Reader, fromServer.Writer, fileSender: null, CancellationToken.None);
        var collect = CollectAsync(fromServer.Reader);
        for (var offset = 0; offset < input.Length; offset += chunk)
        {
            await toServer.Writer.WriteAsync(input.AsMemory(offset, Math.Min(chunk, input.Length - offset)));
        }

        await toServer.Writer.CompleteAsync();
        var timeout = Task.Delay(TimeSpan.FromSeconds(30));
        if (await Task.WhenAny(run, timeout) == timeout)
        {
            throw new TimeoutException("the session did not end when its input did");
        }

        var summary = await run;
        await fromServer.Writer.CompleteAsync();
        return new Outcome(await collect, summary);
    }

    private static async Task<byte[]> CollectAsync(PipeReader reader)
    {
        using var output = new MemoryStream();
        while (true)
        {
            var result = await reader.ReadAsync();
            foreach (var segment in result.Buffer)
            {
                output.Write(segment.Span);
            }

            reader.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return output.ToArray();
            }
        }
    }

    /// <summary>What a client of <paramref name="version"/> sends to open a session.</summary>
    public static Bytes ClientHandshake(ProtocolVersion version)
    {
        var bytes = Bytes.New().U64(0x6e697863).U64(version.ToWire());
        if (version.AtLeast(38))
        {
            bytes.Strs();
        }

        if (version.AtLeast(14))
        {
            bytes.U64(0);
        }

        if (version.AtLeast(11))
        {
            bytes.U64(0);
        }

        return bytes;
    }

    /// <summary>What Kiln answers a client of <paramref name="version"/>.</summary>
    public static Bytes ServerHandshake(ProtocolVersion version)
    {
        var bytes = Bytes.New().U64(0x6478696f).U64(new ProtocolVersion(1, 38).ToWire());
        if (version.AtLeast(38))
        {
            bytes.Strs();
        }

        if (version.AtLeast(33))
        {
            bytes.Str("Kiln 0.1.0");
        }

        if (version.AtLeast(35))
        {
            bytes.U64(2);
        }

        return bytes.U64(Bytes.Last);
    }
}
