using System.IO.Pipelines;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Wire;
using Kiln.Protocol.Wire;

namespace Kiln.Protocol.Worker;

/// <summary>
/// The client side of the worker protocol (Nix's <c>RemoteStore</c>), for what Kiln asks of a stock Nix daemon it uses
/// as a builder: which paths it has, copying paths in, building a derivation, copying outputs out. One request at a
/// time; every reply is preceded by the daemon's log channel (STDERR_*), whose build log lines go to the caller.
/// An error the daemon reports is a <see cref="NixErrorException"/> with its message; bytes that break the grammar are
/// a <see cref="ProtocolViolationException"/> (the connection is then unusable).
/// </summary>
public sealed class WorkerClient
{
    private const ulong WorkerMagic1 = 0x6e697863;
    private const ulong WorkerMagic2 = 0x6478696f;

    // 1.37 is the newest version without the feature exchange of 1.38; every daemon since Nix 2.20 speaks it, older
    // ones answer with their own.
    private static readonly ProtocolVersion Newest = new(1, 37);
    private static readonly ProtocolVersion Oldest = new(1, 21); // Nix 2.3

    // What a daemon may send: a log line or message is at most 1 MiB (Kiln keeps lines far shorter), a list as long as
    // a closure may be. The daemon is another machine's: nothing it sends may make Kiln allocate without bound.
    private static readonly WireLimits Limits = new() { MaxStringLength = 1 << 20, MaxListCount = 1 << 20, MaxFrameLength = 1 << 20 };

    private readonly WireInput _input;
    private readonly WireOutput _output;

    private WorkerClient(WireInput input, WireOutput output)
    {
        _input = input;
        _output = output;
    }

    /// <summary>The version both sides speak.</summary>
    public ProtocolVersion Version { get; private set; }

    /// <summary>The daemon's Nix version (empty before 1.33).</summary>
    public string DaemonVersion { get; private set; } = "";

    /// <summary>Whether the daemon trusts this client (null: it did not say, before 1.35).</summary>
    public bool? Trusted { get; private set; }

    /// <summary>Shakes hands with the daemon at the other end of <paramref name="fromDaemon"/>/<paramref name="toDaemon"/>.</summary>
    public static async Task<WorkerClient> ConnectAsync(PipeReader fromDaemon, PipeWriter toDaemon, CancellationToken cancellationToken)
    {
        var client = new WorkerClient(new WireInput(fromDaemon, Limits), new WireOutput(toDaemon));
        await client.HandshakeAsync(cancellationToken).ConfigureAwait(false);
        return client;
    }

    private async Task HandshakeAsync(CancellationToken cancellationToken)
    {
        _output.WriteU64(WorkerMagic1);
        await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
        var magic = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
        if (magic != WorkerMagic2)
        {
            throw new ProtocolViolationException($"the other end does not speak the worker protocol (magic 0x{magic:x})");
        }

        var daemon = ProtocolVersion.FromWire(await _input.ReadU64Async(cancellationToken).ConfigureAwait(false));
        if (daemon.Major != 1 || daemon < Oldest)
        {
            throw new ProtocolViolationException($"the daemon speaks worker protocol {daemon}; Kiln needs 1.21 (Nix 2.3) or newer");
        }

        Version = ProtocolVersion.Min(daemon, Newest);
        _output.WriteU64(Newest.ToWire());
        _output.WriteU64(0); // no CPU affinity (obsolete)
        _output.WriteU64(0); // reserveSpace (obsolete)
        await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
        if (Version.AtLeast(33))
        {
            DaemonVersion = await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false);
        }

        if (Version.AtLeast(35))
        {
            Trusted = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false) switch { 1 => true, 2 => false, _ => null };
        }

        await ReadLogAsync(null, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Which of <paramref name="paths"/> the daemon's store holds (substituting none).</summary>
    public async Task<SortedSet<StorePath>> QueryValidPathsAsync(IEnumerable<StorePath> paths, CancellationToken cancellationToken)
    {
        _output.WriteU64((ulong)WorkerOp.QueryValidPaths);
        _output.WriteStorePaths(paths);
        if (Version.AtLeast(27))
        {
            _output.WriteBool(false);
        }

        await SendAsync(null, cancellationToken).ConfigureAwait(false);
        return await _input.ReadStorePathsAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>What the daemon knows of <paramref name="path"/>; null when it is not valid there.</summary>
    public async Task<ValidPathInfo?> QueryPathInfoAsync(StorePath path, CancellationToken cancellationToken)
    {
        _output.WriteU64((ulong)WorkerOp.QueryPathInfo);
        _output.WriteStorePath(path);
        await SendAsync(null, cancellationToken).ConfigureAwait(false);
        if (!await _input.ReadBoolAsync(cancellationToken).ConfigureAwait(false)) // every version Kiln speaks (≥ 1.21) says whether it is valid
        {
            return null;
        }

        var deriver = await _input.ReadOptionalStorePathAsync(cancellationToken).ConfigureAwait(false);
        var narHash = ParseHash(await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false));
        var references = await _input.ReadStorePathsAsync(cancellationToken).ConfigureAwait(false);
        var registered = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
        var narSize = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
        var info = new ValidPathInfo { Path = path, Deriver = deriver, NarHash = narHash, NarSize = (long)narSize, References = references, RegistrationTime = (long)registered };
        if (Version.AtLeast(16))
        {
            var ultimate = await _input.ReadBoolAsync(cancellationToken).ConfigureAwait(false);
            var signatures = await _input.ReadStringsAsync(cancellationToken).ConfigureAwait(false);
            var ca = await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false);
            info = info with
            {
                Ultimate = ultimate,
                Signatures = new SortedSet<string>(signatures, StringComparer.Ordinal),
                ContentAddress = ca.Length == 0 ? null : ContentAddress.Parse(ca),
            };
        }

        return info;
    }

    /// <summary>
    /// Adds a path with its NAR (read from <paramref name="nar"/> as it is sent). <paramref name="repair"/> replaces
    /// different contents the daemon holds under the path. The daemon checks no signatures: it must trust the user
    /// Kiln logs in as (<c>trusted-users</c>), as any remote builder must trust the machine that sends it work.
    /// </summary>
    public async Task AddToStoreNarAsync(ValidPathInfo info, Stream nar, bool repair, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(info);
        ArgumentNullException.ThrowIfNull(nar);
        _output.WriteU64((ulong)WorkerOp.AddToStoreNar);
        _output.WritePathInfo(info with { Ultimate = false }, includePath: true, Version); // not ultimate: the daemon did not build it
        _output.WriteBool(repair);
        _output.WriteBool(true); // dontCheckSigs
        if (!Version.AtLeast(23))
        {
            // Before 1.23 the daemon pulls the NAR through the log channel (STDERR_READ), a piece at a time.
            await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
            await ReadLogAsync(null, cancellationToken, pull: nar).ConfigureAwait(false);
            return;
        }

        var buffer = new byte[128 * 1024];

        // Framed, with the log channel read meanwhile: the daemon may answer (an error, say) before the last frame, and
        // must never be left blocked writing while Kiln is blocked writing.
        await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var reply = ReadLogAsync(null, stop.Token);
        _ = reply.ContinueWith(t => stop.Cancel(), CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        try
        {
            int read;
            while ((read = await nar.ReadAsync(buffer, stop.Token).ConfigureAwait(false)) > 0)
            {
                WireWriter.WriteFrame(_output.Buffer, buffer.AsSpan(0, read));
                await _output.FlushAsync(stop.Token).ConfigureAwait(false);
            }

            WireWriter.WriteFrameEnd(_output.Buffer);
            await _output.FlushAsync(stop.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (reply.IsFaulted && !cancellationToken.IsCancellationRequested)
        {
            // the daemon's answer (awaited below) says why
        }

        await reply.ConfigureAwait(false);
    }

    /// <summary>
    /// Sets the daemon's options for the builds of this connection (Nix's <c>SetOptions</c>): no substitution, the
    /// build's cores and silence limit, and <paramref name="overrides"/> (settings by name, which a daemon applies for a
    /// client it trusts).
    /// </summary>
    public async Task SetOptionsAsync(int buildCores, TimeSpan maxSilentTime, IReadOnlyDictionary<string, string> overrides, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(overrides);
        _output.WriteU64((ulong)WorkerOp.SetOptions);
        _output.WriteBool(false); // keepFailed
        _output.WriteBool(false); // keepGoing
        _output.WriteBool(false); // tryFallback
        _output.WriteU64(0); // verbosity: errors only (build log lines come as results whatever it is)
        _output.WriteU64(1); // maxBuildJobs
        _output.WriteU64((ulong)Math.Max(0, (long)maxSilentTime.TotalSeconds));
        _output.WriteBool(true); // useBuildHook (obsolete)
        _output.WriteU64(0); // verboseBuild: build output at the error level
        _output.WriteU64(0); // logType (obsolete)
        _output.WriteU64(0); // printBuildTrace (obsolete)
        _output.WriteU64((ulong)Math.Max(0, buildCores));
        _output.WriteBool(false); // useSubstitutes: what Kiln asks for is built, never fetched from the daemon's caches
        WireWriter.WriteStringMap(_output.Buffer, overrides);
        await SendAsync(null, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Deletes <paramref name="paths"/> from the daemon's store (Nix's gcDeleteSpecific); returns those it deleted.</summary>
    public async Task<SortedSet<StorePath>> DeletePathsAsync(IEnumerable<StorePath> paths, CancellationToken cancellationToken)
    {
        _output.WriteU64((ulong)WorkerOp.CollectGarbage);
        _output.WriteU64(3); // gcDeleteSpecific
        _output.WriteStorePaths(paths);
        _output.WriteBool(false); // ignoreLiveness
        _output.WriteU64(ulong.MaxValue); // maxFreed
        _output.WriteU64(0);
        _output.WriteU64(0);
        _output.WriteU64(0); // three obsolete fields
        await SendAsync(null, cancellationToken).ConfigureAwait(false);
        var deleted = await _input.ReadStorePathsAsync(cancellationToken).ConfigureAwait(false);
        await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // bytes freed
        await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // obsolete
        return deleted;
    }

    /// <summary>
    /// Builds <paramref name="derivation"/> (sent as a BasicDerivation: its input sources must name the whole input
    /// closure, which the daemon must hold). Each line the builder logs goes to <paramref name="logLine"/>. With
    /// <paramref name="check"/> it builds even if the outputs are valid there, and fails unless the result is the same
    /// (Nix's <c>--check</c>).
    /// </summary>
    public async Task<BuildResult> BuildDerivationAsync(StorePath drvPath, Derivation derivation, Action<string> logLine, CancellationToken cancellationToken, bool check = false)
    {
        _output.WriteU64((ulong)WorkerOp.BuildDerivation);
        _output.WriteStorePath(drvPath);
        BasicDerivationWire.Write(_output.Buffer, derivation);
        _output.WriteU64(check ? 2UL : 0UL); // bmCheck or bmNormal
        await SendAsync(logLine, cancellationToken).ConfigureAwait(false);

        var status = (BuildStatus)await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
        var message = await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false);
        var result = new BuildResult { Status = status, ErrorMessage = message };
        if (Version.AtLeast(29))
        {
            result = result with
            {
                TimesBuilt = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false),
                IsNonDeterministic = await _input.ReadBoolAsync(cancellationToken).ConfigureAwait(false),
                StartTime = (long)await _input.ReadU64Async(cancellationToken).ConfigureAwait(false),
                StopTime = (long)await _input.ReadU64Async(cancellationToken).ConfigureAwait(false),
            };
        }

        if (Version.AtLeast(37))
        {
            result = result with
            {
                CpuUser = await ReadOptionalMicrosecondsAsync(cancellationToken).ConfigureAwait(false),
                CpuSystem = await ReadOptionalMicrosecondsAsync(cancellationToken).ConfigureAwait(false),
            };
        }

        if (Version.AtLeast(28))
        {
            // Realisations of content-addressed outputs; the outputs Kiln builds have their paths in the derivation.
            await _input.ReadStringMapAsync(cancellationToken).ConfigureAwait(false);
        }

        return result;
    }

    /// <summary>
    /// The NAR of <paramref name="path"/>, which must be valid: a stream that ends where the NAR does (it is read off
    /// the connection as it is parsed). Read it to its end before the next request.
    /// </summary>
    public async Task<Stream> NarFromPathAsync(StorePath path, CancellationToken cancellationToken)
    {
        _output.WriteU64((ulong)WorkerOp.NarFromPath);
        _output.WriteStorePath(path);
        await SendAsync(null, cancellationToken).ConfigureAwait(false);
        return new DelimitedNarStream(_input);
    }

    private async Task SendAsync(Action<string>? logLine, CancellationToken cancellationToken)
    {
        await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
        await ReadLogAsync(logLine, cancellationToken).ConfigureAwait(false);
    }

    private async Task<TimeSpan?> ReadOptionalMicrosecondsAsync(CancellationToken cancellationToken) =>
        await _input.ReadU64Async(cancellationToken).ConfigureAwait(false) switch
        {
            0 => null,
            1 => await _input.ReadInt64Async(cancellationToken).ConfigureAwait(false) is var us and >= 0 and <= 100L * 365 * 86400 * 1_000_000
                ? TimeSpan.FromMicroseconds(us) : throw new ProtocolViolationException("a CPU time out of range"),
            var tag => throw new ProtocolViolationException($"an optional duration tagged {tag}"),
        };

    // The daemon's log channel up to the reply: STDERR_LAST, or STDERR_ERROR (thrown). Build log lines (activity
    // results of type 101, BuildLogLine, and 107, PostBuildLogLine) go to logLine; Nix's own messages do not, as
    // Nix's build hook keeps them out of the build's log too.
    private async Task ReadLogAsync(Action<string>? logLine, CancellationToken cancellationToken, Stream? pull = null)
    {
        byte[]? buffer = null;
        while (true)
        {
            var tag = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
            switch (tag)
            {
                case StderrTag.Last:
                    return;
                case StderrTag.Error:
                    throw await ReadErrorAsync(cancellationToken).ConfigureAwait(false);
                case StderrTag.Next:
                    await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false);
                    break;
                case StderrTag.StartActivity:
                    await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // id
                    await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // level
                    await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // type
                    await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false); // text
                    await ReadFieldsAsync(cancellationToken).ConfigureAwait(false);
                    await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // parent
                    break;
                case StderrTag.StopActivity:
                    await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
                    break;
                case StderrTag.Result:
                    await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // activity
                    var type = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
                    var fields = await ReadFieldsAsync(cancellationToken).ConfigureAwait(false);
                    if (type is 101 or 107 && fields is [string line, ..])
                    {
                        logLine?.Invoke(line);
                    }

                    break;
                case StderrTag.Read when pull is not null:
                    var wanted = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
                    buffer ??= new byte[64 * 1024];
                    var read = await pull.ReadAsync(buffer.AsMemory(0, (int)Math.Min(wanted, (ulong)buffer.Length)), cancellationToken).ConfigureAwait(false);
                    _output.WriteBytes(buffer.AsSpan(0, read)); // an empty answer is the end of the data
                    await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
                    break;
                default:
                    // STDERR_WRITE, and STDERR_READ outside an upload, belong to requests Kiln does not make.
                    throw new ProtocolViolationException($"the daemon sent log message 0x{tag:x}, which Kiln does not expect");
            }
        }
    }

    private async Task<List<object>> ReadFieldsAsync(CancellationToken cancellationToken)
    {
        var count = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
        if (count > 64)
        {
            throw new ProtocolViolationException($"a log message with {count} fields");
        }

        var fields = new List<object>();
        for (var i = 0UL; i < count; i++)
        {
            fields.Add(await _input.ReadU64Async(cancellationToken).ConfigureAwait(false) switch
            {
                0 => await _input.ReadU64Async(cancellationToken).ConfigureAwait(false),
                1 => await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false),
                var kind => throw new ProtocolViolationException($"a log field of kind {kind}"),
            });
        }

        return fields;
    }

    private async Task<NixErrorException> ReadErrorAsync(CancellationToken cancellationToken)
    {
        if (!Version.AtLeast(26))
        {
            var text = await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false);
            var status = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
            return new NixErrorException(text, (int)Math.Min(status, int.MaxValue));
        }

        await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false); // type ("Error")
        await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // level
        await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false); // name (unused)
        var message = await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false);
        await ReadPositionAsync(cancellationToken).ConfigureAwait(false);
        var traces = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
        if (traces > 1024)
        {
            throw new ProtocolViolationException($"an error with {traces} traces");
        }

        for (var i = 0UL; i < traces; i++)
        {
            await ReadPositionAsync(cancellationToken).ConfigureAwait(false);
            await _input.ReadStringAsync(cancellationToken).ConfigureAwait(false);
        }

        return new NixErrorException(message);
    }

    // Positions are always sent empty by daemons (Nix asserts it).
    private async Task ReadPositionAsync(CancellationToken cancellationToken)
    {
        if (await _input.ReadU64Async(cancellationToken).ConfigureAwait(false) != 0)
        {
            throw new ProtocolViolationException("an error with a source position");
        }
    }

    private static NixHash ParseHash(string text) =>
        text.Contains(':', StringComparison.Ordinal) ? NixHash.ParseAnyPrefixed(text) : NixHash.ParseUnprefixed(text, NixHashAlgorithm.Sha256);
}
