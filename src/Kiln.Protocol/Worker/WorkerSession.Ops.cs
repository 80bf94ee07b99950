using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Wire;

namespace Kiln.Protocol.Worker;

// The operations that read and query the store, and the ones Kiln does not do (yet).
public sealed partial class WorkerSession
{
    private string? DeniedBecause(WorkerOp op) => op switch
    {
        WorkerOp.AddToStore or WorkerOp.AddTextToStore or WorkerOp.AddToStoreNar or WorkerOp.AddMultipleToStore or
            WorkerOp.AddIndirectRoot or WorkerOp.AddPermRoot or WorkerOp.AddSignatures or WorkerOp.AddBuildLog or
            WorkerOp.RegisterDrvOutput or WorkerOp.CollectGarbage or WorkerOp.OptimiseStore or WorkerOp.VerifyStore or
            WorkerOp.ImportPaths => _options.UploadsDenied,
        WorkerOp.BuildPaths or WorkerOp.BuildPathsWithResults or WorkerOp.BuildDerivation or WorkerOp.EnsurePath => _options.BuildsDenied,
        _ => null,
    };

    private async Task PerformAsync(WorkerOp op, CancellationToken ct)
    {
        // Refused before the request is read: the session ends with the message (its payload cannot be skipped).
        if (DeniedBecause(op) is { } denied)
        {
            throw new NixErrorException(denied);
        }

        switch (op)
        {
            case WorkerOp.IsValidPath: await IsValidPathAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryValidPaths: await QueryValidPathsAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryPathInfo: await QueryPathInfoAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryPathHash: await QueryPathHashAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryReferences: await QueryReferencesAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryReferrers: await QueryPathSetAsync(p => _store.QueryReferrersAsync(p, ct), ct).ConfigureAwait(false); break;
            case WorkerOp.QueryValidDerivers: await QueryPathSetAsync(p => _store.QueryValidDeriversAsync(p, ct), ct).ConfigureAwait(false); break;
            case WorkerOp.QueryDerivationOutputs: await QueryDerivationOutputsAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryDerivationOutputNames: await QueryDerivationOutputNamesAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryDerivationOutputMap: await QueryDerivationOutputMapAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryDeriver: await QueryDeriverAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryPathFromHashPart: await QueryPathFromHashPartAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryAllValidPaths: await QueryAllValidPathsAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryMissing: await QueryMissingAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.HasSubstitutes: await HasSubstitutesAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QuerySubstitutablePaths: await QuerySubstitutablePathsAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QuerySubstitutablePathInfo: await QuerySubstitutablePathInfoAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QuerySubstitutablePathInfos: await QuerySubstitutablePathInfosAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.AddToStore: await AddToStoreAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.AddTextToStore: await AddTextToStoreAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.AddToStoreNar: await AddToStoreNarAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.AddMultipleToStore: await AddMultipleToStoreAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.NarFromPath: await NarFromPathAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.AddTempRoot: await AddTempRootAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.AddIndirectRoot: await AddIndirectRootAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.AddPermRoot: await AddPermRootAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.FindRoots: await FindRootsAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.CollectGarbage: await CollectGarbageAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.SyncWithGC: await ReplyOneAsync(() => Task.CompletedTask).ConfigureAwait(false); break;
            case WorkerOp.OptimiseStore: await OptimiseStoreAsync().ConfigureAwait(false); break;
            case WorkerOp.AddSignatures: await AddSignaturesAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.VerifyStore: await VerifyStoreAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.EnsurePath: await EnsurePathAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.SetOptions: await SetOptionsAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.BuildPaths: await BuildPathsAsync(withResults: false, ct).ConfigureAwait(false); break;
            case WorkerOp.BuildPathsWithResults: await BuildPathsAsync(withResults: true, ct).ConfigureAwait(false); break;
            case WorkerOp.BuildDerivation: await BuildDerivationAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.AddBuildLog: await AddBuildLogAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.RegisterDrvOutput: await RegisterDrvOutputAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.QueryRealisation: await QueryRealisationAsync(ct).ConfigureAwait(false); break;
            case WorkerOp.ImportPaths:
                _log.StartWork();
                throw new NixErrorException("ImportPaths is only used by Nix before 2.0, which Kiln does not support");
            case WorkerOp.ExportPath:
                await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
                await _input.ReadU64Async(ct).ConfigureAwait(false);
                _log.StartWork();
                throw new NixErrorException("ExportPath is only used by Nix before 2.0, which Kiln does not support");
            default:
                // The request's fields are unknown, so the stream cannot be followed any further.
                throw new NixErrorException($"invalid operation {(ulong)op}");
        }
    }

    private async Task IsValidPathAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var valid = await _store.QueryValidPathsAsync([path], ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteBool(valid.Contains(path));
    }

    private async Task QueryValidPathsAsync(CancellationToken ct)
    {
        var paths = await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        var substitute = _version.AtLeast(27) && await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        // Substituting fetches from the account's own upstream caches into its own view: reading, not uploading.
        var valid = substitute
            ? await _store.SubstituteAsync(paths, ct, text => _log.Log($"warning: {text}")).ConfigureAwait(false)
            : await _store.QueryValidPathsAsync(paths, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteStorePaths(valid);
    }

    private async Task<ValidPathInfo?> InfoAsync(StorePath path, CancellationToken ct)
    {
        var infos = await _store.QueryPathInfosAsync([path], ct).ConfigureAwait(false);
        return infos.TryGetValue(path, out var info) ? info : null;
    }

    private async Task<ValidPathInfo> RequireInfoAsync(StorePath path, CancellationToken ct) =>
        await InfoAsync(path, ct).ConfigureAwait(false) ?? throw NotValid(path);

    private static NixErrorException NotValid(StorePath path) => new($"path '{path}' is not valid");

    private async Task QueryPathInfoAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var info = await InfoAsync(path, ct).ConfigureAwait(false);
        if (info is null && !_version.AtLeast(17))
        {
            throw NotValid(path);
        }

        _log.StopWork();
        if (_version.AtLeast(17))
        {
            _output.WriteBool(info is not null);
        }

        if (info is not null)
        {
            WritePathInfo(info, includePath: false);
        }
    }

    private void WritePathInfo(ValidPathInfo info, bool includePath) => _output.WritePathInfo(info, includePath, _version);

    private async Task QueryPathHashAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var info = await RequireInfoAsync(path, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteString(info.NarHash.ToBase16());
    }

    private async Task QueryReferencesAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var info = await RequireInfoAsync(path, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteStorePaths(info.References);
    }

    private async Task QueryPathSetAsync(Func<StorePath, Task<IReadOnlySet<StorePath>>> query, CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var result = await query(path).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteStorePaths(result);
    }

    private async Task QueryDerivationOutputsAsync(CancellationToken ct)
    {
        var drv = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var outputs = await _store.QueryDerivationOutputMapAsync(drv, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteStorePaths(outputs.Values.OfType<StorePath>());
    }

    private async Task QueryDerivationOutputNamesAsync(CancellationToken ct)
    {
        var drv = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var outputs = await _store.QueryDerivationOutputMapAsync(drv, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteStringSet(outputs.Keys);
    }

    private async Task QueryDerivationOutputMapAsync(CancellationToken ct)
    {
        var drv = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var outputs = await _store.QueryDerivationOutputMapAsync(drv, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteU64((ulong)outputs.Count);
        foreach (var (name, path) in outputs.OrderBy(o => o.Key, StringComparer.Ordinal))
        {
            _output.WriteString(name);
            _output.WriteOptionalStorePath(path);
        }
    }

    private async Task QueryDeriverAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var info = await RequireInfoAsync(path, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteOptionalStorePath(info.Deriver);
    }

    private async Task QueryPathFromHashPartAsync(CancellationToken ct)
    {
        var hashPart = await _input.ReadStringAsync(StorePath.HashLength, ct).ConfigureAwait(false);
        _log.StartWork();
        var path = await _store.QueryPathFromHashPartAsync(hashPart, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteOptionalStorePath(path);
    }

    private async Task QueryAllValidPathsAsync(CancellationToken ct)
    {
        _log.StartWork();
        var paths = await _store.QueryAllValidPathsAsync(ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteStorePaths(paths);
    }

    private async Task<List<DerivedPath>> ReadDerivedPathsAsync(CancellationToken ct)
    {
        var texts = await _input.ReadStringsAsync(ct).ConfigureAwait(false);
        return texts.Select(t => DerivedPath.Parse(t, _version)).ToList();
    }

    private async Task QueryMissingAsync(CancellationToken ct)
    {
        var targets = await ReadDerivedPathsAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var missing = await _store.QueryMissingAsync(targets, _log, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteStorePaths(missing.WillBuild);
        _output.WriteStorePaths(missing.WillSubstitute);
        _output.WriteStorePaths(missing.Unknown);
        _output.WriteU64((ulong)missing.DownloadSize);
        _output.WriteU64((ulong)missing.NarSize);
    }

    // Kiln has no upstream caches yet: nothing is substitutable.
    private async Task HasSubstitutesAsync(CancellationToken ct)
    {
        await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        _log.StopWork();
        _output.WriteBool(false);
    }

    private async Task QuerySubstitutablePathsAsync(CancellationToken ct)
    {
        await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        _log.StopWork();
        _output.WriteStorePaths([]);
    }

    private async Task QuerySubstitutablePathInfoAsync(CancellationToken ct)
    {
        await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        _log.StopWork();
        _output.WriteU64(0);
    }

    private async Task QuerySubstitutablePathInfosAsync(CancellationToken ct)
    {
        if (_version.AtLeast(22))
        {
            // map<path, content address>
            var count = await _input.ReadAsync<ulong>((ref System.Buffers.SequenceReader<byte> r, out ulong c) => WireReader.TryReadCount(ref r, _options.Limits, out c), ct).ConfigureAwait(false);
            for (var i = 0UL; i < count; i++)
            {
                await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
                await _input.ReadStringAsync(ct).ConfigureAwait(false);
            }
        }
        else
        {
            await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        }

        _log.StartWork();
        _log.StopWork();
        _output.WriteU64(0);
    }

    private async Task NarFromPathAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var blob = await _store.OpenNarAsync(path, ct).ConfigureAwait(false) ?? throw NotValid(path);
        await using (blob.ConfigureAwait(false))
        {
            _log.StopWork();

            // The NAR follows raw: the client parses it to find its end.
            await _output.SendNarAsync(blob, ct).ConfigureAwait(false);
        }
    }

    private async Task ReplyOneAsync(Func<Task> work)
    {
        _log.StartWork();
        await work().ConfigureAwait(false);
        _log.StopWork();
        _output.WriteU64(1);
    }

    private async Task AddTempRootAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        await ReplyOneAsync(() => _store.AddTempRootAsync(path, ct)).ConfigureAwait(false);
    }

    private async Task AddIndirectRootAsync(CancellationToken ct)
    {
        var link = await _input.ReadStringAsync(4096, ct).ConfigureAwait(false);
        await ReplyOneAsync(() => _store.AddIndirectRootAsync(link, ct)).ConfigureAwait(false);
    }

    private async Task AddPermRootAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        var rootName = await _input.ReadStringAsync(4096, ct).ConfigureAwait(false);
        _log.StartWork();
        var name = await _store.AddPermRootAsync(path, rootName, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteString(name);
    }

    private async Task FindRootsAsync(CancellationToken ct)
    {
        _log.StartWork();
        var roots = await _store.FindRootsAsync(ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteU64((ulong)roots.Count);
        foreach (var (link, path) in roots)
        {
            _output.WriteString(link);
            _output.WriteStorePath(path);
        }
    }

    private async Task CollectGarbageAsync(CancellationToken ct)
    {
        var action = await _input.ReadU64Async(ct).ConfigureAwait(false);
        var paths = await _input.ReadStorePathsAsync(ct).ConfigureAwait(false);
        var ignoreLiveness = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        var maxFreed = await _input.ReadU64Async(ct).ConfigureAwait(false);
        for (var i = 0; i < 3; i++)
        {
            await _input.ReadU64Async(ct).ConfigureAwait(false); // obsolete
        }

        _log.StartWork();
        if (ignoreLiveness)
        {
            throw new NixErrorException("you are not allowed to ignore liveness");
        }

        if (action > (ulong)GcAction.DeleteSpecific)
        {
            throw new NixErrorException($"unknown garbage collector action {action}");
        }

        var request = new GcRequest((GcAction)action, paths, maxFreed > long.MaxValue ? long.MaxValue : (long)maxFreed);
        var result = await _store.CollectGarbageAsync(request, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteStrings(result.Paths.Select(p => p.FullPath).ToList());
        _output.WriteU64((ulong)result.BytesFreed);
        _output.WriteU64(0); // obsolete
    }

    private async Task OptimiseStoreAsync()
    {
        await ReplyOneAsync(() =>
        {
            _log.Log("Kiln's store keeps each NAR once, by its hash: there is nothing to optimise");
            return Task.CompletedTask;
        }).ConfigureAwait(false);
    }

    private async Task AddSignaturesAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        var signatures = await _input.ReadStringsAsync(ct).ConfigureAwait(false);
        await ReplyOneAsync(() => _options.SignaturesAllowed
            ? _store.AddSignaturesAsync(path, new SortedSet<string>(signatures, StringComparer.Ordinal), ct)
            : throw new NixErrorException("you are not privileged to add signatures")).ConfigureAwait(false);
    }

    private async Task VerifyStoreAsync(CancellationToken ct)
    {
        var checkContents = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        var repair = await _input.ReadBoolAsync(ct).ConfigureAwait(false);
        _log.StartWork();
        var errors = await _store.VerifyStoreAsync(checkContents, repair, _log, ct).ConfigureAwait(false);
        _log.StopWork();
        _output.WriteBool(errors);
    }

    private async Task EnsurePathAsync(CancellationToken ct)
    {
        var path = await _input.ReadStorePathAsync(ct).ConfigureAwait(false);
        await ReplyOneAsync(() => _store.EnsurePathAsync(path, ct)).ConfigureAwait(false);
    }

    private async Task SetOptionsAsync(CancellationToken ct)
    {
        // keepFailed, keepGoing, tryFallback, verbosity, maxBuildJobs, maxSilentTime, useBuildHook, verboseBuild,
        // logType, printBuildTrace, buildCores, useSubstitutes; then the overrides. Client settings are requests
        // from an untrusted party: Kiln takes only what cannot relax isolation, trust or limits.
        var fields = new ulong[12];
        for (var i = 0; i < fields.Length; i++)
        {
            fields[i] = await _input.ReadU64Async(ct).ConfigureAwait(false);
        }

        var overrides = new Dictionary<string, string>(StringComparer.Ordinal);
        if (_version.AtLeast(12))
        {
            foreach (var (name, value) in await _input.ReadStringMapAsync(ct).ConfigureAwait(false))
            {
                overrides[name] = value;
            }
        }

        var settings = new ClientBuildSettings
        {
            KeepGoing = fields[1] != 0,
            MaxSilentTime = TimeSpan.FromSeconds(fields[5]),
            VerboseBuild = fields[7] == 0, // lvlError means "show build logs"
        };
        if (overrides.TryGetValue("max-silent-time", out var silent) && ulong.TryParse(silent, out var silentSeconds))
        {
            settings = settings with { MaxSilentTime = TimeSpan.FromSeconds(silentSeconds) };
        }

        if ((overrides.TryGetValue("timeout", out var timeout) || overrides.TryGetValue("build-timeout", out timeout)) && ulong.TryParse(timeout, out var timeoutSeconds))
        {
            settings = settings with { Timeout = TimeSpan.FromSeconds(timeoutSeconds) };
        }

        if ((overrides.TryGetValue("max-build-log-size", out var logSize) || overrides.TryGetValue("build-max-log-size", out logSize)) && long.TryParse(logSize, out var logBytes) && logBytes >= 0)
        {
            settings = settings with { MaxLogSize = logBytes };
        }

        if (overrides.TryGetValue("keep-going", out var keepGoing))
        {
            settings = settings with { KeepGoing = keepGoing == "true" };
        }

        _buildSettings = settings;
        _log.StartWork();
        _log.StopWork();
    }

    private async Task AddBuildLogAsync(CancellationToken ct)
    {
        await _input.ReadStringAsync(1024, ct).ConfigureAwait(false);
        _log.StartWork();
        await new Wire.FramedPayloadStream(_input).DrainAsync(ct).ConfigureAwait(false);
        throw new NixErrorException("Kiln keeps the logs of the builds it runs; it does not accept uploaded build logs");
    }

    private async Task RegisterDrvOutputAsync(CancellationToken ct)
    {
        await _input.ReadStringAsync(ct).ConfigureAwait(false);
        if (!_version.AtLeast(31))
        {
            await _input.ReadStringAsync(ct).ConfigureAwait(false);
        }

        _log.StartWork();
        throw new NixErrorException("Kiln does not support content-addressed derivations (ca-derivations) yet");
    }

    private async Task QueryRealisationAsync(CancellationToken ct)
    {
        await _input.ReadStringAsync(1024, ct).ConfigureAwait(false);
        _log.StartWork();
        _log.StopWork();
        _output.WriteU64(0); // no realisations: an empty set in both encodings
    }

    private static NixHash ParseNarHash(string text) => NixHash.ParseAny(text, NixHashAlgorithm.Sha256);
}
