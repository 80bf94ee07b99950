using Kiln.Protocol;
using Kiln.Scheduler.Queue;
using Kiln.Store.Blobs;
using Kiln.Store.Metadata;
using Microsoft.Extensions.Logging;

namespace Kiln.Farm.StockNix;

/// <summary>
/// The stock Nix builders of <c>kiln builder add</c>, each pulling work from the job queue like an agent (one claim
/// loop per <c>--max-jobs</c>). The list is read from the database at start and every few seconds after, so builders
/// added or removed while the server runs are taken up or stopped (a removed builder's running builds are cancelled
/// and retried elsewhere). Each builder's key and known host key are written to files of their own, readable only by
/// the server, because ssh reads them from files.
/// </summary>
public sealed partial class StockBuilders : IAsyncDisposable
{
    private static readonly TimeSpan Poll = TimeSpan.FromSeconds(3);

    private readonly IJobQueue _queue;
    private readonly IAgentMetadata _metadata;
    private readonly IBlobStore _blobs;
    private readonly string _directory;
    private readonly TimeSpan _heartbeat;
    private readonly long _maxNarSize;
    private readonly ILogger _logger;
    private readonly Dictionary<string, (string Signature, EmbeddedAgent Agent)> _running = new(StringComparer.Ordinal);
    private readonly HashSet<string> _reported = new(StringComparer.Ordinal); // unusable builders, logged once
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    /// <summary>Starts watching the list of builders (<paramref name="directory"/>: where their key files go, mode 0700).</summary>
    public StockBuilders(IJobQueue queue, IAgentMetadata metadata, IBlobStore blobs, string directory, TimeSpan heartbeat, long maxNarSize, ILogger logger)
    {
        _queue = queue;
        _metadata = metadata;
        _blobs = blobs;
        _directory = directory;
        _heartbeat = heartbeat;
        _maxNarSize = maxNarSize;
        _logger = logger;
        _loop = Task.Run(WatchAsync);
    }

    private async Task WatchAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            try
            {
                await ReconcileAsync(await _metadata.ListBuildersAsync(_stop.Token).ConfigureAwait(false)).ConfigureAwait(false);
                await Task.Delay(Poll, _stop.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_stop.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // the database may be briefly unavailable; the builders already running go on
            catch (Exception e)
#pragma warning restore CA1031
            {
                LogListFailed(_logger, e);
                await Task.Delay(Poll, _stop.Token).ContinueWith(_ => { }, TaskScheduler.Default).ConfigureAwait(false);
            }
        }
    }

    private async Task ReconcileAsync(IReadOnlyList<BuilderRecord> builders)
    {
        var wanted = builders.ToDictionary(b => b.Name, StringComparer.Ordinal);
        foreach (var (name, (signature, agent)) in _running.ToList())
        {
            if (!wanted.TryGetValue(name, out var record) || Signature(record) != signature)
            {
                _running.Remove(name);
                await agent.DisposeAsync().ConfigureAwait(false);
                if (record is null && Directory.Exists(Path.Combine(_directory, name)))
                {
                    // Its key goes with it (and a host key it learnt, which a builder added again must learn anew).
                    Directory.Delete(Path.Combine(_directory, name), recursive: true);
                }

                LogRemoved(_logger, name);
            }
        }

        foreach (var builder in builders.Where(b => !_running.ContainsKey(b.Name)))
        {
            string error;
            if (!IsValidName(builder.Name))
            {
                error = "its name is not a plain name";
            }
            else if (BuilderAddress.TryParse(builder.Uri, out var address, out error))
            {
                var login = WriteLogin(builder, address);
                var executor = new StockNixExecutor(login, _blobs, Math.Max(1, builder.MaxJobs), _maxNarSize);
                var info = new AgentInfo(builder.Name, new SortedSet<string>(builder.Systems, StringComparer.Ordinal), new SortedSet<string>(builder.Features, StringComparer.Ordinal),
                    Math.Max(1, builder.MaxJobs))
                { StockBuilder = true };
                _running[builder.Name] = (Signature(builder), new EmbeddedAgent(_queue, executor, info, _logger, _heartbeat) { ReleaseOnStop = true });
                continue;
            }

            if (_reported.Add(Signature(builder)))
            {
                LogUnusable(_logger, builder.Name, error);
            }
        }
    }

    /// <summary>A builder's name: letters, digits, '.', '-', '_' (it names a directory and appears in logs).</summary>
    public static bool IsValidName(string name) =>
        name is { Length: > 0 and <= 64 } && name[0] != '.' && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_');

    // What a running builder was started from: a changed record (removed and added again) restarts it.
    private static string Signature(BuilderRecord builder) =>
        string.Join('\n', builder.Uri, string.Join(' ', builder.Systems), string.Join(' ', builder.Features), builder.MaxJobs, builder.SshKey, builder.HostKey, builder.Created);

    private StockBuilderLogin WriteLogin(BuilderRecord builder, BuilderAddress address)
    {
        var directory = Path.Combine(_directory, builder.Name);
        Directory.CreateDirectory(_directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var key = Path.Combine(directory, "key");
        Kiln.Store.DataDirectoryBindings.WritePrivateFile(key, builder.SshKey.EndsWith('\n') ? builder.SshKey : builder.SshKey + "\n");
        var knownHosts = Path.Combine(directory, "known_hosts");
        if (builder.HostKey.Length > 0)
        {
            Kiln.Store.DataDirectoryBindings.WritePrivateFile(knownHosts, $"{address.KnownHostsName} {builder.HostKey.Trim()}\n");
        }
        else if (!File.Exists(knownHosts))
        {
            Kiln.Store.DataDirectoryBindings.WritePrivateFile(knownHosts, ""); // learnt on first contact, then kept
        }

        return new StockBuilderLogin(address, key, knownHosts, builder.HostKey.Length > 0);
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _loop.ConfigureAwait(false);
        foreach (var (_, agent) in _running.Values)
        {
            await agent.DisposeAsync().ConfigureAwait(false);
        }

        _running.Clear();
        _stop.Dispose();
    }

    [LoggerMessage(EventId = LogEvents.BuildersChanged, Level = LogLevel.Information, Message = "builder {Name} removed")]
    private static partial void LogRemoved(ILogger logger, string name);

    [LoggerMessage(EventId = LogEvents.BuildersChanged, Level = LogLevel.Warning, Message = "builder {Name} is not used: {Error}")]
    private static partial void LogUnusable(ILogger logger, string name, string error);

    [LoggerMessage(EventId = LogEvents.AgentFailed, Level = LogLevel.Warning, Message = "the list of builders could not be read")]
    private static partial void LogListFailed(ILogger logger, Exception exception);
}
