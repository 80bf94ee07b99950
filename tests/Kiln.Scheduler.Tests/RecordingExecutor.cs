using System.Collections.Concurrent;
using System.Text;
using Kiln.Agent;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// An executor that does not run builders: for each job it writes one small output per declared output (a file
/// naming the derivation) into the real blob store and records what it was asked. Builds can be held at a gate,
/// made to fail, and their concurrency is measured. The sandbox itself is tested against stock Nix end to end.
/// </summary>
internal sealed class RecordingExecutor(IAgentStore store, int slots = 4) : IBuildExecutor
{
    private int _running;

    public int Slots => slots;

    public ConcurrentQueue<BuildJob> Jobs { get; } = new();

    /// <summary>Derivation names whose builds fail at once with exit code 1.</summary>
    public HashSet<string> Failing { get; } = [];

    /// <summary>How long builds of these derivation names take (others: 20 ms).</summary>
    public Dictionary<string, int> Durations { get; } = [];

    /// <summary>When set, every build waits for it after logging its first line.</summary>
    public TaskCompletionSource? Gate { get; set; }

    /// <summary>How long a cancelled build takes to stop (an agent's sandbox takes a moment to die).</summary>
    public TimeSpan StopDelay { get; set; }

    public int MaxConcurrent { get; private set; }

    /// <summary>What builds of these derivation names report they used: peak memory, CPU time, wall time.</summary>
    public Dictionary<string, (long PeakMemory, TimeSpan Cpu, TimeSpan Wall)> Usage { get; } = [];

    public async Task<BuildOutcome> BuildAsync(BuildJob job, IBuildLog log, CancellationToken cancellationToken)
    {
        Jobs.Enqueue(job);
        var running = Interlocked.Increment(ref _running);
        lock (Jobs)
        {
            MaxConcurrent = Math.Max(MaxConcurrent, running);
        }

        try
        {
            log.Line($"building {job.DrvPath.Name}");
            if (Failing.Contains(job.Derivation.Name))
            {
                return new BuildOutcome { Failure = BuildFailureKind.PermanentFailure, ErrorMessage = $"builder for '{job.DrvPath}' failed with exit code 1", ExitCode = 1 };
            }

            if (Gate is { } gate)
            {
                await gate.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            else
            {
                await Task.Delay(Durations.GetValueOrDefault(job.Derivation.Name, 20), cancellationToken).ConfigureAwait(false);
            }

            log.Line("done");
            var outputs = job.Derivation.Outputs.Select(o => Write(o.Key, o.Value.StorePath!.Value, $"built from {job.DrvPath}\n")).ToList();
            var now = DateTimeOffset.UtcNow;
            if (Usage.TryGetValue(job.Derivation.Name, out var used))
            {
                return new BuildOutcome { Outputs = outputs, StartTime = now, StopTime = now + used.Wall, CpuUser = used.Cpu, CpuSystem = TimeSpan.Zero, PeakMemoryBytes = used.PeakMemory };
            }

            return new BuildOutcome { Outputs = outputs, StartTime = now, StopTime = now };
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested && StopDelay > TimeSpan.Zero)
        {
            await Task.Delay(StopDelay, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
        finally
        {
            Interlocked.Decrement(ref _running);
        }
    }

    private BuiltOutput Write(string name, StorePath path, string text)
    {
        var nar = Nar.OfFile(Encoding.UTF8.GetBytes(text));
        using var pending = store.CreateNar();
        pending.Write(nar);
        var (hash, size) = pending.Complete();
        Assert.Equal(NixHash.Compute(NixHashAlgorithm.Sha256, nar), hash);
        pending.Commit();
        return new BuiltOutput(name, path, hash, size, [], null);
    }
}

/// <summary>NARs made by hand, as the format specifies them.</summary>
internal static class Nar
{
    public static byte[] OfFile(byte[] contents)
    {
        using var output = new MemoryStream();
        foreach (var token in new[] { "nix-archive-1", "(", "type", "regular", "contents" })
        {
            Str(output, Encoding.ASCII.GetBytes(token));
        }

        Str(output, contents);
        Str(output, ")"u8.ToArray());
        return output.ToArray();
    }

    private static void Str(Stream output, byte[] bytes)
    {
        output.Write(BitConverter.GetBytes((ulong)bytes.Length));
        output.Write(bytes);
        output.Write(new byte[(8 - (bytes.Length % 8)) % 8]);
    }
}
