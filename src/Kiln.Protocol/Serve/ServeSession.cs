using System.IO.Pipelines;
using System.Threading.Channels;
using Kiln.Nix;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Wire;
using Kiln.Protocol.Wire;
using Kiln.Protocol.Worker;
using Microsoft.Extensions.Logging;

namespace Kiln.Protocol.Serve;

/// <summary>What a serve session may do beyond reading: <c>nix-store --serve --write</c>, and the key's permissions.</summary>
public sealed record ServeSessionOptions
{
    /// <summary>The limits requests are read with.</summary>
    public WireLimits Limits { get; init; } = WireLimits.Default;

    /// <summary>Why adding paths is refused (no <c>--write</c>, or no store:write), or null if it is allowed.</summary>
    public string? UploadsDenied { get; init; }

    /// <summary>Why building is refused, or null if it is allowed.</summary>
    public string? BuildsDenied { get; init; }
}

/// <summary>
/// The legacy serve protocol (<c>nix-store --serve</c>, which <c>ssh://</c> stores and remote builders run), version
/// 2.7 and down to 2.5 (Nix 2.3). stdout is the protocol, with no framing; build logs and errors go to stderr, as
/// <c>nix-store --serve</c> writes them. An error ends the session, as it ends <c>nix-store --serve</c>: the message
/// goes to stderr and the client sees the connection close.
/// </summary>
public sealed partial class ServeSession(IWorkerStore store, IWorkerBuilder builder, ServeSessionOptions options, ILogger logger)
{
    public const ulong Magic1 = 0x390c9deb;
    public const ulong Magic2 = 0x5452eecb;
    private static readonly ProtocolVersion ServerVersion = new(2, 7);
    private static readonly ProtocolVersion MinimumVersion = new(2, 5);

    private WireInput _input = null!;
    private WireOutput _output = null!;
    private Func<string, ValueTask> _stderr = null!;
    private int _minor;
    private int _operations;

    private enum Command : ulong
    {
        QueryValidPaths = 1,
        QueryPathInfos = 2,
        DumpStorePath = 3,
        ImportPaths = 4,
        ExportPaths = 5,
        BuildPaths = 6,
        QueryClosure = 7,
        BuildDerivation = 8,
        AddToStoreNar = 9,
    }

    /// <summary>
    /// Serves until the client closes; <paramref name="stderr"/> receives log and error lines (no newline).
    /// <paramref name="clientGone"/> fires when the client has gone away: a request being worked on (a build) stops;
    /// between requests the end of input ends the session as usual.
    /// </summary>
    public async Task<SessionSummary> RunAsync(PipeReader input, PipeWriter output, IFileSender? fileSender, Func<string, ValueTask> stderr, CancellationToken cancellationToken,
        CancellationToken clientGone = default)
    {
        ArgumentNullException.ThrowIfNull(stderr);
        _input = new WireInput(input, options.Limits);
        _output = new WireOutput(output, fileSender);
        _stderr = stderr;
        ProtocolVersion? client = null;
        string? closeReason = null;
        try
        {
            if (await _input.ReadU64Async(cancellationToken).ConfigureAwait(false) != Magic1)
            {
                throw new ProtocolViolationException("protocol mismatch");
            }

            _output.WriteU64(Magic2);
            _output.WriteU64(ServerVersion.ToWire());
            await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
            client = ProtocolVersion.FromWire(await _input.ReadU64Async(cancellationToken).ConfigureAwait(false));
            var negotiated = client.Value.CompareTo(ServerVersion) < 0 ? client.Value : ServerVersion;
            if (negotiated.Major != 2 || negotiated.CompareTo(MinimumVersion) < 0)
            {
                throw new NixErrorException($"Nix serve protocol {client} is not supported by Kiln, which needs 2.5 (Nix 2.3) or newer");
            }

            _minor = negotiated.Minor;
            using var working = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, clientGone);
            while (true)
            {
                var (ok, code) = await _input.TryReadFirstAsync<ulong>(WireReader.TryReadU64, cancellationToken).ConfigureAwait(false);
                if (!ok)
                {
                    break;
                }

                _operations++;
                await PerformAsync((Command)code, working.Token).ConfigureAwait(false);
                await _output.FlushAsync(working.Token).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is KilnException or NixFormatException or BadStorePathException)
        {
            closeReason = e.Message;
            await _stderr($"error: {e.Message}").ConfigureAwait(false);
        }
        catch (IOException e) when (StorageFailure.Describe(e) is { } storage)
        {
            LogStorageFailure(logger, e);
            closeReason = storage;
            await _stderr($"error: {storage}").ConfigureAwait(false);
        }
        catch (Exception e) when (e is ProtocolViolationException or WireFormatException)
        {
            closeReason = $"malformed request: {e.Message}";
            await _stderr($"error: {e.Message}").ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            closeReason = SessionSummary.Cancelled;
        }
        catch (Exception e) when ((e is OperationCanceledException or IOException) && clientGone.IsCancellationRequested)
        {
            // Once the client has gone, whichever comes first (the cancelled work, or a write into the closed
            // connection) ends the session for the same reason.
            closeReason = SessionSummary.ClientGone;
        }
        catch (IOException e)
        {
            closeReason = $"connection error: {e.Message}";
        }
#pragma warning disable CA1031 // A session must end with a reason, never with an exception into the server.
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogInternalError(logger, e);
            closeReason = $"internal error: {e.GetType().Name}";
            await _stderr("error: internal error in Kiln; see the server log").ConfigureAwait(false);
        }

        return new SessionSummary(client, _operations, _input.BytesRead, _output.BytesWritten, closeReason);
    }

    private async Task PerformAsync(Command command, CancellationToken ct)
    {
        switch (command)
        {
            case Command.QueryValidPaths: await QueryValidPathsAsync(ct).ConfigureAwait(false); break;
            case Command.QueryPathInfos: await QueryPathInfosAsync(ct).ConfigureAwait(false); break;
            case Command.DumpStorePath: await DumpStorePathAsync(ct).ConfigureAwait(false); break;
            case Command.QueryClosure: await QueryClosureAsync(ct).ConfigureAwait(false); break;
            case Command.AddToStoreNar: await AddToStoreNarAsync(ct).ConfigureAwait(false); break;
            case Command.BuildPaths: await BuildPathsAsync(ct).ConfigureAwait(false); break;
            case Command.BuildDerivation: await BuildDerivationAsync(ct).ConfigureAwait(false); break;
            case Command.ImportPaths: await ImportPathsAsync(ct).ConfigureAwait(false); break;
            case Command.ExportPaths: await ExportPathsAsync(ct).ConfigureAwait(false); break;
            default:
                throw new ProtocolViolationException($"unknown serve command {(ulong)command}");
        }
    }

    private static void Require(string? denied)
    {
        if (denied is not null)
        {
            throw new NixErrorException(denied);
        }
    }

    private async Task QueryValidPathsAsync(CancellationToken ct)
    {
        var lockPaths = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        var substitute = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        var paths = await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        // Substituting: Kiln fetches from the account's upstream caches (warnings go to the client's stderr).
        var warnings = new List<string>();
        var valid = substitute
            ? await store.SubstituteAsync(paths, ct, warnings.Add).ConfigureAwait(false)
            : await store.QueryValidPathsAsync(paths, ct).ConfigureAwait(false);
        foreach (var warning in warnings)
        {
            await _stderr($"warning: {warning}").ConfigureAwait(false);
        }

        if (lockPaths)
        {
            // Temporary roots for this session, so the paths stay while the client uses them.
            foreach (var path in valid)
            {
                await store.AddTempRootAsync(path, ct).ConfigureAwait(false);
            }
        }

        _output.WriteStorePaths(paths.Where(valid.Contains));
    }

    private async Task QueryPathInfosAsync(CancellationToken ct)
    {
        var paths = await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        var infos = await store.QueryPathInfosAsync(paths, ct).ConfigureAwait(false);
        foreach (var path in paths)
        {
            if (!infos.TryGetValue(path, out var info))
            {
                continue;
            }

            _output.WriteStorePath(path);
            _output.WriteOptionalStorePath(info.Deriver);
            _output.WriteStorePaths(info.References);
            _output.WriteU64((ulong)info.NarSize); // download size: the NAR, uncompressed
            _output.WriteU64((ulong)info.NarSize);
            if (_minor >= 4)
            {
                _output.WriteString(info.NarHash.ToString(HashFormat.Nix32, includeAlgorithm: true));
                _output.WriteString(info.ContentAddress?.ToString() ?? "");
                _output.WriteStringSet(info.Signatures);
            }
        }

        _output.WriteString("");
    }

    private async Task DumpStorePathAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        var blob = await store.OpenNarAsync(path, ct).ConfigureAwait(false) ?? throw new NixErrorException($"path '{path}' is not valid");
        await using (blob.ConfigureAwait(false))
        {
            await _output.SendNarAsync(blob, ct).ConfigureAwait(false);
        }
    }

    // The closure of references, one batched query per level; with includeOutputs, derivations' outputs too.
    private async Task QueryClosureAsync(CancellationToken ct)
    {
        var includeOutputs = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        var roots = await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        var closure = new SortedSet<StorePath>();
        var frontier = roots.ToList();
        while (frontier.Count > 0)
        {
            var infos = await store.QueryPathInfosAsync(frontier, ct).ConfigureAwait(false);
            var missing = frontier.FirstOrDefault(p => !infos.ContainsKey(p) && roots.Contains(p));
            if (missing != default)
            {
                throw new NixErrorException($"path '{missing}' is not valid");
            }

            var next = new HashSet<StorePath>();
            foreach (var (path, info) in infos)
            {
                if (!closure.Add(path))
                {
                    continue;
                }

                next.UnionWith(info.References);
                if (includeOutputs && path.IsDerivation)
                {
                    foreach (var output in (await store.QueryDerivationOutputMapAsync(path, ct).ConfigureAwait(false)).Values)
                    {
                        if (output is { } known)
                        {
                            next.Add(known);
                        }
                    }
                }
            }

            // Not next.ExceptWith(closure): that walks the whole closure once per level, quadratic down a long chain.
            next.RemoveWhere(closure.Contains);
            frontier = [.. next];
        }

        _output.WriteStorePaths(closure);
    }

    private async Task AddToStoreNarAsync(CancellationToken ct)
    {
        Require(options.UploadsDenied);
        var info = await WorkerSession.ReadValidPathInfoAsync(_input, ct).ConfigureAwait(false);
        if (info.NarSize <= 0)
        {
            throw new NixErrorException($"cannot add '{info.Path}': its NAR size must be given");
        }

        var nar = new CountedPayloadStream(_input, info.NarSize);
        try
        {
            await store.AddToStoreAsync(info, nar, repair: false, checkSignatures: false, ct).ConfigureAwait(false);
        }
        finally
        {
            await nar.DrainAsync(ct).ConfigureAwait(false);
        }

        _output.WriteU64(1);
    }

    // nix-store --export's format: per path 1, the NAR, the magic, the path, its references, its deriver ("" for
    // none), 0 (no legacy signature); 0 at the end.
    private const ulong ExportMagic = 0x4558494e;

    // The serve protocol's ImportPaths (sent by clients of servers before 2.5): paths in the export format. The
    // NAR comes before the path it is for, so each is spooled to a temporary file (hashed on the way) and then
    // added like any upload, verified against what was received.
    private async Task ImportPathsAsync(CancellationToken ct)
    {
        Require(options.UploadsDenied);
        while (true)
        {
            var next = await _input.ReadU64Async(ct).ConfigureAwait(false);
            if (next == 0)
            {
                break;
            }

            if (next != 1)
            {
                throw new ProtocolViolationException("input doesn't look like something created by 'nix-store --export'");
            }

            // Deleted when closed, whatever happens.
            var spool = Path.Combine(Path.GetTempPath(), $"kiln-import-{Guid.NewGuid():N}.nar");
            await using var file = new FileStream(spool, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16, FileOptions.DeleteOnClose);
            NixHash narHash;
            using (var hashing = new HashingStream(NixHashAlgorithm.Sha256, file))
            {
                await new DelimitedNarStream(_input).CopyToAsync(hashing, ct).ConfigureAwait(false);
                narHash = hashing.Finish();
            }

            if (await _input.ReadU64Async(ct).ConfigureAwait(false) != ExportMagic)
            {
                throw new ProtocolViolationException("Nix archive cannot be imported; wrong format");
            }

            var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
            var references = await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
            var deriver = await _input.ReadStringAsync(ct).ConfigureAwait(false);
            if (await _input.ReadU64Async(ct).ConfigureAwait(false) == 1)
            {
                await _input.ReadStringAsync(ct).ConfigureAwait(false); // a legacy signature: ignored, as Nix does
            }

            var info = new Kiln.Nix.Store.ValidPathInfo
            {
                Path = path,
                NarHash = narHash,
                NarSize = file.Length,
                References = references,
                Deriver = deriver.Length == 0 ? null : StorePath.Parse(deriver),
            };
            file.Position = 0;
            await store.AddToStoreAsync(info, file, repair: false, checkSignatures: false, ct).ConfigureAwait(false);
        }

        _output.WriteU64(1);
    }

    // ExportPaths: the paths (references first among them) in the export format, NARs straight from their blobs.
    private async Task ExportPathsAsync(CancellationToken ct)
    {
        await _input.ReadU64Async(ct).ConfigureAwait(false); // obsolete "sign" flag
        var paths = await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        var infos = await store.QueryPathInfosAsync(paths, ct).ConfigureAwait(false);
        if (paths.FirstOrDefault(p => !infos.ContainsKey(p)) is var missing && missing != default)
        {
            throw new NixErrorException($"path '{missing}' is not valid");
        }

        // References first; iterative, as a client chooses how deep the chain of paths it names is.
        var ordered = Graph.Order(paths, p => infos[p].References.Where(r => r != p), infos.ContainsKey);

        foreach (var path in ordered)
        {
            var info = infos[path];
            var blob = await store.OpenNarAsync(path, ct).ConfigureAwait(false) ?? throw new NixErrorException($"path '{path}' is not valid");
            await using (blob.ConfigureAwait(false))
            {
                _output.WriteU64(1);
                await _output.SendNarAsync(blob, ct).ConfigureAwait(false);
            }

            _output.WriteU64(ExportMagic);
            _output.WriteStorePath(path);
            _output.WriteStorePaths(info.References);
            _output.WriteOptionalStorePath(info.Deriver);
            _output.WriteU64(0);
        }

        _output.WriteU64(0);
    }

    private async Task<ClientBuildSettings> ReadBuildOptionsAsync(CancellationToken ct)
    {
        var maxSilent = await _input.ReadU64Async(ct).ConfigureAwait(false);
        var timeout = await _input.ReadU64Async(ct).ConfigureAwait(false);
        var maxLog = _minor >= 2 ? await _input.ReadU64Async(ct).ConfigureAwait(false) : 0;
        if (_minor >= 3)
        {
            await _input.ReadU64Async(ct).ConfigureAwait(false); // nrRepeats
            await _input.ReadU64Async(ct).ConfigureAwait(false); // enforceDeterminism
        }

        if (_minor >= 7)
        {
            await _input.ReadU64Async(ct).ConfigureAwait(false); // keepFailed: a build directory on Kiln helps nobody
        }

        // The client shows stderr as the build's log, so failure messages carry no log tail.
        return new ClientBuildSettings
        {
            MaxSilentTime = TimeSpan.FromSeconds(Math.Min(maxSilent, int.MaxValue)),
            Timeout = TimeSpan.FromSeconds(Math.Min(timeout, int.MaxValue)),
            MaxLogSize = (long)Math.Min(maxLog, long.MaxValue),
            VerboseBuild = true,
        };
    }

    private async Task BuildPathsAsync(CancellationToken ct)
    {
        var targets = (await _input.ReadStringsAsync(ct).ConfigureAwait(false)).Select(t => DerivedPath.Parse(t, new ProtocolVersion(1, 29))).ToList();
        var settings = await ReadBuildOptionsAsync(ct).ConfigureAwait(false);
        Require(options.BuildsDenied);
        var results = await WithLogAsync(events => builder.BuildPathsAsync(targets, settings, events, ct)).ConfigureAwait(false);
        var failed = results.FirstOrDefault(r => !r.Succeeded);
        if (failed is null)
        {
            _output.WriteU64(0);
        }
        else
        {
            _output.WriteU64((ulong)failed.Status);
            _output.WriteString(failed.ErrorMessage);
        }
    }

    private async Task BuildDerivationAsync(CancellationToken ct)
    {
        var drvPath = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        var name = Derivation.NameFromPath(drvPath);
        var derivation = await _input.ReadAsync((ref System.Buffers.SequenceReader<byte> r, out Derivation d) =>
            BasicDerivationWire.TryRead(ref r, name, options.Limits, out d), ct).ConfigureAwait(false);
        var settings = await ReadBuildOptionsAsync(ct).ConfigureAwait(false);
        Require(options.BuildsDenied);
        var result = await WithLogAsync(events => builder.BuildDerivationAsync(drvPath, derivation, settings, events, ct)).ConfigureAwait(false);
        result.WriteServe(_output, _minor);
    }

    // Runs a build, writing its log lines and messages to stderr as they come.
    private async Task<T> WithLogAsync<T>(Func<IBuildEvents, Task<T>> work)
    {
        var lines = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });
        var events = new StderrEvents(lines.Writer);
        var task = Task.Run(() => work(events));
        _ = task.ContinueWith(_ => lines.Writer.TryComplete(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        await foreach (var line in lines.Reader.ReadAllAsync().ConfigureAwait(false))
        {
            events.Pending.Taken(line);
            await _stderr(line).ConfigureAwait(false);
        }

        return await task.ConfigureAwait(false);
    }

    /// <summary>
    /// Build events as <c>nix-store --serve</c> shows them: the builder's lines as they are, as many as
    /// <see cref="PendingLog"/> lets wait for a slow client.
    /// </summary>
    private sealed class StderrEvents(ChannelWriter<string> lines) : IBuildEvents
    {
        private long _activity;

        public PendingLog Pending { get; } = new();

        public long BuildStarted(StorePath drvPath) => Interlocked.Increment(ref _activity);

        public void LogLine(long activity, string line) => Add(line);

        public void BuildStopped(long activity)
        {
        }

        public void Message(string text) => Add(text);

        private void Add(string line)
        {
            if (Pending.TryAdd(line))
            {
                lines.TryWrite(line);
            }
        }
    }

    [LoggerMessage(EventId = LogEvents.StorageFailed, Level = LogLevel.Error, Message = "Kiln's storage failed in a serve session")]
    private static partial void LogStorageFailure(ILogger logger, Exception exception);

    [LoggerMessage(EventId = LogEvents.ServeSessionFailed, Level = LogLevel.Error, Message = "internal error in a serve session")]
    private static partial void LogInternalError(ILogger logger, Exception exception);
}
