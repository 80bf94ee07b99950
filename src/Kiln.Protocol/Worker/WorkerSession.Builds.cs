using System.Threading.Channels;
using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Wire;

namespace Kiln.Protocol.Worker;

/// <summary>
/// The build operations. Progress reaches the client while the build runs: each build is a Build activity whose log
/// lines are BuildLogLine results (<c>nix build -L</c> prints <c>name&gt; line</c>, <c>nix-build</c> the plain lines).
/// Builds report from their own threads; the events pass through a channel and only the session writes to the wire.
/// </summary>
public sealed partial class WorkerSession
{
    private ulong _nextActivity = ((ulong)Environment.ProcessId << 32) | 1;

    private async Task BuildPathsAsync(bool withResults, CancellationToken ct)
    {
        var targets = await ReadDerivedPathsAsync(ct).ConfigureAwait(false);
        var mode = withResults || _version.AtLeast(15) ? await _input.ReadU64Async(ct).ConfigureAwait(false) : 0;
        _log.StartWork();
        RefuseRepairAndCheck(mode);
        var builder = _builder ?? new StoreOnlyBuilder(_store);
        var results = await WithBuildEventsAsync(events => builder.BuildPathsAsync(targets, _buildSettings, events, ct), ct).ConfigureAwait(false);
        if (!withResults)
        {
            var failed = targets.Zip(results).Where(r => !r.Second.Succeeded).ToList();
            if (failed.Count == 1)
            {
                throw new NixErrorException(failed[0].Second.ErrorMessage, ExitStatus([failed[0].Second]));
            }

            if (failed.Count > 1)
            {
                throw new NixErrorException($"build of {string.Join(", ", failed.Select(f => $"'{f.First.ToWire(_version)}'"))} failed", ExitStatus(failed.Select(f => f.Second)));
            }
        }

        _log.StopWork();
        if (withResults)
        {
            _output.WriteU64((ulong)results.Count);
            foreach (var (target, result) in targets.Zip(results))
            {
                _output.WriteString(target.ToWire(_version));
                result.Write(_output, _version);
            }
        }
        else
        {
            _output.WriteU64(1);
        }
    }

    private async Task BuildDerivationAsync(CancellationToken ct)
    {
        var drvPath = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        var name = Derivation.NameFromPath(drvPath);
        var derivation = await _input.ReadAsync((ref System.Buffers.SequenceReader<byte> r, out Derivation d) =>
            BasicDerivationWire.TryRead(ref r, name, _options.Limits, out d), ct).ConfigureAwait(false);
        var mode = await _input.ReadU64Async(ct).ConfigureAwait(false);
        _log.StartWork();
        RefuseRepairAndCheck(mode);
        var builder = _builder ?? new StoreOnlyBuilder(_store);
        var result = await WithBuildEventsAsync(events => builder.BuildDerivationAsync(drvPath, derivation, _buildSettings, events, ct), ct).ConfigureAwait(false);
        _log.StopWork();
        result.Write(_output, _version);
    }

    private static void RefuseRepairAndCheck(ulong mode)
    {
        if (mode != 0)
        {
            throw new NixErrorException("repairing or checking is not allowed because you are not privileged");
        }
    }

    // The exit status pre-1.26 clients exit with: Nix's 100 for a failed build, 101 for a timeout, 1 otherwise.
    private static int ExitStatus(IEnumerable<BuildResult> failures)
    {
        var status = 0x60;
        foreach (var failure in failures)
        {
            status |= failure.Status switch
            {
                BuildStatus.TimedOut => 0x05,
                BuildStatus.PermanentFailure or BuildStatus.DependencyFailed => 0x04,
                _ => 0,
            };
        }

        return status == 0x60 ? 1 : status;
    }

    // Runs the work while writing its events to the client as they come, flushing whenever the queue runs dry.
    private async Task<T> WithBuildEventsAsync<T>(Func<IBuildEvents, Task<T>> work, CancellationToken ct)
    {
        var channel = Channel.CreateUnbounded<BuildEvent>(new UnboundedChannelOptions { SingleReader = true });
        var events = new ChannelEvents(channel.Writer, () => Interlocked.Increment(ref _nextActivity));
        var task = Task.Run(() => work(events), ct);
        _ = task.ContinueWith(_ => channel.Writer.TryComplete(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        // Nix 2.4 renumbered the verbosity levels: Info is 3 from there on, 2 before.
        var info = _version.AtLeast(32) ? 3UL : 2UL;
        // Before 2.4, clients printed only plain messages (their simple logger ignores results), so a daemon sent
        // each log line as one when the client asked for build output.
        var printLines = !_version.AtLeast(32) && _buildSettings.VerboseBuild;
        await foreach (var e in channel.Reader.ReadAllAsync(ct).ConfigureAwait(false))
        {
            switch (e)
            {
                case BuildEvent.Started started:
                    _log.StartActivity(started.Activity, info, 105, $"building '{started.DrvPath}'", [started.DrvPath.FullPath, "", 1L, 1L], 0);
                    break;
                case BuildEvent.Line line:
                    events.Pending.Taken(line.Text);
                    if (printLines)
                    {
                        _log.Log(line.Text);
                    }

                    _log.Result(line.Activity, 101, [line.Text]);
                    break;
                case BuildEvent.Stopped stopped:
                    _log.StopActivity(stopped.Activity);
                    break;
                case BuildEvent.Note note:
                    _log.Log(note.Text);
                    break;
            }

            if (!channel.Reader.TryPeek(out _))
            {
                await _output.FlushAsync(ct).ConfigureAwait(false);
            }
        }

        return await task.ConfigureAwait(false);
    }

    private abstract record BuildEvent
    {
        public sealed record Started(ulong Activity, StorePath DrvPath) : BuildEvent;

        public sealed record Line(ulong Activity, string Text) : BuildEvent;

        public sealed record Stopped(ulong Activity) : BuildEvent;

        public sealed record Note(string Text) : BuildEvent;
    }

    // Log lines beyond what the client has taken are dropped rather than queued without bound; activity starts and
    // stops are never dropped (a result for an unknown activity makes Nix's progress bar abort).
    private sealed class ChannelEvents(ChannelWriter<BuildEvent> writer, Func<ulong> nextActivity) : IBuildEvents
    {
        public PendingLog Pending { get; } = new();

        public long BuildStarted(StorePath drvPath)
        {
            var activity = nextActivity();
            writer.TryWrite(new BuildEvent.Started(activity, drvPath));
            return (long)activity;
        }

        public void LogLine(long activity, string line)
        {
            if (!Pending.TryAdd(line))
            {
                return;
            }

            writer.TryWrite(new BuildEvent.Line((ulong)activity, line));
        }

        public void BuildStopped(long activity) => writer.TryWrite(new BuildEvent.Stopped((ulong)activity));

        public void Message(string text) => writer.TryWrite(new BuildEvent.Note(text));
    }
}
