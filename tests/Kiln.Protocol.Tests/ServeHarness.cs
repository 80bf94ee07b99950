using System.IO.Pipelines;
using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Serve;
using Kiln.Protocol.Worker;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Protocol.Tests;

/// <summary>Runs a serve session (<c>nix-store --serve</c>) over in-memory pipes on a scripted client byte stream.</summary>
public static class ServeHarness
{
    public sealed record Outcome(byte[] Output, IReadOnlyList<string> Stderr, SessionSummary Summary);

    public static async Task<Outcome> RunAsync(IWorkerStore store, byte[] input, ServeSessionOptions? options = null)
    {
        var toServer = new Pipe();
        var fromServer = new Pipe();
        var stderr = new List<string>();
        var session = new ServeSession(store, new LoggingBuilder(), options ?? new ServeSessionOptions(), NullLogger.Instance);
        var run = session.RunAsync(toServer.Reader, fromServer.Writer, fileSender: null, line =>
        {
            lock (stderr)
            {
                stderr.Add(line);
            }

            return ValueTask.CompletedTask;
        }, CancellationToken.None);
        var collect = Task.Run(async () =>
        {
            using var output = new MemoryStream();
            while (true)
            {
                var result = await fromServer.Reader.ReadAsync();
                foreach (var segment in result.Buffer)
                {
                    output.Write(segment.Span);
                }

                fromServer.Reader.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted)
                {
                    return output.ToArray();
                }
            }
        });
        await toServer.Writer.WriteAsync(input);
        await toServer.Writer.CompleteAsync();
        if (await Task.WhenAny(run, Task.Delay(TimeSpan.FromSeconds(30))) != run)
        {
            throw new TimeoutException("the serve session did not end when its input did");
        }

        var summary = await run;
        await fromServer.Writer.CompleteAsync();
        return new Outcome(await collect, stderr, summary);
    }

    /// <summary>What a client of serve protocol 2.<paramref name="minor"/> sends to open a session.</summary>
    public static Bytes ClientHandshake(int minor) => Bytes.New().U64(ServeSession.Magic1).U64(0x200UL | (uint)minor);

    // A builder that writes a line of log and fails: enough for the session's reading and writing around a build.
    private sealed class LoggingBuilder : IWorkerBuilder
    {
        public Task<IReadOnlyList<BuildResult>> BuildPathsAsync(IReadOnlyList<DerivedPath> targets, ClientBuildSettings settings, IBuildEvents events, CancellationToken cancellationToken) =>
            Task.FromResult<IReadOnlyList<BuildResult>>(targets.Select(_ => Fail(events)).ToList());

        public Task<BuildResult> BuildDerivationAsync(StorePath drvPath, Derivation derivation, ClientBuildSettings settings, IBuildEvents events, CancellationToken cancellationToken)
        {
            var activity = events.BuildStarted(drvPath);
            events.LogLine(activity, $"building {derivation.Outputs.Count} outputs");
            events.BuildStopped(activity);
            return Task.FromResult(Fail(events));
        }

        private static BuildResult Fail(IBuildEvents events)
        {
            events.Message("a line for stderr");
            return new BuildResult { Status = BuildStatus.PermanentFailure, ErrorMessage = "no builds in this test" };
        }
    }
}
