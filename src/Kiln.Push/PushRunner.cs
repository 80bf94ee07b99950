using Amazon.Runtime;
using Amazon.S3;
using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store;
using Kiln.Store.Blobs;
using Kiln.Store.Metadata;
using Kiln.Store.Push;
using Kiln.Store.Upstream;
using Microsoft.Extensions.Logging;

namespace Kiln.Push;

/// <summary>
/// Works through the push queue: claims due pushes, pushes each build's outputs with their closure to its target as
/// the account (its view, its signing key, its netrc credentials), and records the result — done, to be retried
/// (with a back-off that doubles, up to an hour), or failed for good with the reason. Any front door may run one:
/// a claim is a lease in the database. A front door runs a few pushes at once and at most one per account, so an
/// account whose targets are slow holds one slot, not all of them.
/// </summary>
public sealed partial class PushRunner : IDisposable
{
    private const int Slots = 4;

    // The pushes running here, by account (one each), and when they end.
    private readonly Dictionary<long, Task> _running = [];

    private readonly KilnStore _store;
    private readonly PushOptions _options;
    private readonly ILogger _logger;
    private readonly SocketsHttpHandler _handler;
    private readonly HttpClient _http;
    private readonly ClosurePusher _pusher;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<long, string> _pushKeys = new(); // accounts' push keys' private halves

    public PushRunner(KilnStore store, PushOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(options);
        _store = store;
        _options = options;
        _logger = logger;
        _handler = GuardedConnections.Handler(options.AllowPrivateAddresses);
        _http = new HttpClient(_handler, disposeHandler: false) { Timeout = options.AttemptTimeout };
        _pusher = new ClosurePusher(options.TemporaryDirectory);
    }

    /// <summary>Starts pushes due now in the free slots (one per account); returns how many it started.</summary>
    public async Task<int> StartDueAsync(CancellationToken cancellationToken)
    {
        int free;
        long[] busyAccounts;
        lock (_running)
        {
            free = Slots - _running.Count;
            busyAccounts = [.. _running.Keys];
        }

        if (free <= 0)
        {
            return 0;
        }

        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var claimed = await _store.Pushes.ClaimPushesAsync(now, now + (long)_options.AttemptTimeout.TotalSeconds + 60, free, cancellationToken, busyAccounts).ConfigureAwait(false);
        var started = 0;
        foreach (var push in claimed)
        {
            bool busy;
            lock (_running)
            {
                busy = _running.ContainsKey(push.AccountId);
                if (!busy)
                {
                    _running[push.AccountId] = Task.CompletedTask; // (taken before the push starts: it may end at once)
                }
            }

            if (busy)
            {
                // Another of that account's was claimed with it: this one waits, due at once (the next claim passes it
                // over while the account's push runs here, and takes it when that one ends).
                await _store.Pushes.ReleasePushAsync(push.Id, push.Attempts, now, CancellationToken.None).ConfigureAwait(false);
                continue;
            }

            var task = RunThenFreeAsync(push, cancellationToken);
            lock (_running)
            {
                if (_running.ContainsKey(push.AccountId))
                {
                    _running[push.AccountId] = task;
                }
            }

            started++;
        }

        return started;
    }

    /// <summary>Starts what is due and waits for what runs (tests, and a stopping server): how many it started.</summary>
    public async Task<int> RunDueAsync(CancellationToken cancellationToken)
    {
        var started = await StartDueAsync(cancellationToken).ConfigureAwait(false);
        await DrainAsync().ConfigureAwait(false);
        return started;
    }

    /// <summary>Removes the records of pushes that ended longer ago than <see cref="PushOptions.KeepFinished"/>; returns how many.</summary>
    public Task<int> PruneAsync(CancellationToken cancellationToken) =>
        _store.Pushes.PrunePushesAsync(DateTimeOffset.UtcNow.Subtract(_options.KeepFinished).ToUnixTimeSeconds(), cancellationToken);

    /// <summary>Waits for the pushes running here to end.</summary>
    public Task DrainAsync()
    {
        lock (_running)
        {
            return Task.WhenAll(_running.Values);
        }
    }

    private async Task RunThenFreeAsync(PushRecord push, CancellationToken cancellationToken)
    {
        try
        {
            await Task.Yield();
            await RunAsync(push, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            lock (_running)
            {
                _running.Remove(push.AccountId);
            }

            _freed.Release();
        }
    }

    // Released whenever a push ends, so the service claims the next at once rather than at its next idle tick.
    private readonly SemaphoreSlim _freed = new(0);

    /// <summary>Waits until a push running here ends, or <paramref name="timeout"/>.</summary>
    public async Task WaitForSlotAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        if (await _freed.WaitAsync(timeout, cancellationToken).ConfigureAwait(false))
        {
            while (_freed.CurrentCount > 0 && _freed.Wait(0, CancellationToken.None))
            {
                // (one wake-up for however many ended meanwhile)
            }
        }
    }

    private async Task RunAsync(PushRecord push, CancellationToken cancellationToken)
    {
        var target = push.Target;
        try
        {
            using var attempt = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            attempt.CancelAfter(_options.AttemptTimeout);
            var uploaded = await PushAsync(push, attempt.Token).ConfigureAwait(false);
            await _store.Pushes.FinishPushAsync(push.Id, push.Attempts, PushState.Done, uploaded, "", 0, CancellationToken.None).ConfigureAwait(false);
            LogDone(_logger, push.Id, push.BuildId, uploaded, target);
            return;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return; // the server stops: the lease runs out and the push is tried again
        }
        catch (Exception e) when (e is PushException or OperationCanceledException or KilnException)
        {
            await FailedAsync(push, e is PushException { Permanent: true } || e is KilnException { Kind: ErrorKind.Invalid }, e is OperationCanceledException
                ? $"it took longer than {_options.AttemptTimeout.TotalMinutes:0} minutes" : e.Message).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Whatever else went wrong is logged in full, and the account is told only that it did.
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogUnexpected(_logger, push.Id, e);
            await FailedAsync(push, permanent: false, "Kiln could not push (an error inside Kiln; the operator's log has it)").ConfigureAwait(false);
        }
    }

    private async Task FailedAsync(PushRecord push, bool permanent, string message)
    {
        // (What a target answered is the tenant's text: one line, bounded, before it is stored and logged.)
        message = new string([.. message.Take(500).Select(c => char.IsControl(c) ? ' ' : c)]);
        var last = permanent || push.Attempts >= _options.MaxAttempts;
        var wait = TimeSpan.FromSeconds(Math.Min(3600, _options.RetryBase.TotalSeconds * Math.Pow(2, Math.Max(0, push.Attempts - 1))));
        var retryAt = DateTimeOffset.UtcNow.Add(wait).ToUnixTimeSeconds();
        await _store.Pushes.FinishPushAsync(push.Id, push.Attempts, last ? PushState.Failed : PushState.Queued, 0, message, last ? 0 : retryAt, CancellationToken.None).ConfigureAwait(false);
        if (last)
        {
            LogFailed(_logger, push.Id, push.BuildId, push.Target, push.Attempts, message);
        }
        else
        {
            LogWillRetry(_logger, push.Id, push.BuildId, push.Target, wait.TotalSeconds, message);
        }
    }

    private async Task<int> PushAsync(PushRecord push, CancellationToken cancellationToken)
    {
        var target = PushTarget.Parse(push.Target);
        var secret = await _store.Settings.GetSigningKeyAsync(push.AccountId, cancellationToken).ConfigureAwait(false)
            ?? throw new PushException("the account has no signing key to sign what it pushes (kiln signing-key create, or the shell's signing-key create)", permanent: true);
        using var view = _store.OpenView(KilnStore.ReaderFor(push.AccountId));
        var paths = push.Paths.Select(StorePath.FromBaseName).ToList();
        if (target.Kind == PushTargetKind.SshNg)
        {
            return await PushToDaemonAsync(push.AccountId, target, view, paths, SecretKey.Parse(secret), cancellationToken).ConfigureAwait(false);
        }

        var upstream = await _store.Settings.GetUpstreamSettingsAsync(push.AccountId, cancellationToken).ConfigureAwait(false);
        var account = (await _store.Accounts.ListAccountsAsync(cancellationToken).ConfigureAwait(false)).FirstOrDefault(a => a.Id == push.AccountId)
            ?? throw new PushException("the account is gone", permanent: true);
        using var cache = Open(target, account.Name, Netrc.Parse(upstream.Netrc));
        return await _pusher.PushAsync(view, paths, cache, target, SecretKey.Parse(secret), cancellationToken).ConfigureAwait(false);
    }

    // ssh-ng://: ssh logs in with the account's push key to the address the host resolved to (a public one, unless
    // the operator allows others), the host key pinned from the target; the key and known_hosts files live only as
    // long as the connection, in a directory only Kiln reads.
    private async Task<int> PushToDaemonAsync(long account, PushTarget target, StoreView view, IReadOnlyList<StorePath> paths, SecretKey key, CancellationToken cancellationToken)
    {
        if (!_pushKeys.TryGetValue(account, out var privateKey))
        {
            // (Looked up once per account here: making a candidate pair runs ssh-keygen.)
            privateKey = (await PushKeys.GetOrCreateAsync(_store, account, cancellationToken).ConfigureAwait(false)).Private;
            _pushKeys[account] = privateKey;
        }

        var address = await GuardedConnections.ResolveAsync(target.Location.Host.Trim('[', ']'), _options.AllowPrivateAddresses, cancellationToken).ConfigureAwait(false);
        var login = new Kiln.Farm.StockNix.BuilderAddress(Uri.UnescapeDataString(target.Location.UserInfo), address.ToString(), target.Location.IsDefaultPort ? 22 : target.Location.Port);
        Directory.CreateDirectory(_options.TemporaryDirectory);
        var directory = PushOptions.PrivateDirectory(_options.TemporaryDirectory, "push-ssh-");
        try
        {
            var keyFile = Path.Combine(directory, "key");
            DataDirectoryBindings.WritePrivateFile(keyFile, privateKey);
            var knownHosts = Path.Combine(directory, "known_hosts");
            DataDirectoryBindings.WritePrivateFile(knownHosts, $"{login.KnownHostsName} {target.HostKey}\n");
            await using var connection = await Kiln.Farm.StockNix.SshDaemonConnection.OpenAsync(login, keyFile, knownHosts, hostKeyKnown: true, cancellationToken, requireTrusted: false)
                .ConfigureAwait(false);
            try
            {
                return await DaemonPusher.PushAsync(connection.Client, view, paths, key, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception e) when (e is Kiln.Protocol.NixErrorException or IOException or Kiln.Protocol.ProtocolViolationException)
            {
                var said = await connection.ExitMessageAsync().ConfigureAwait(false);
                throw new PushException($"{target} refused the push: {(e is Kiln.Protocol.NixErrorException || said.Length == 0 ? e.Message : said)}", inner: e);
            }
        }
        catch (Kiln.Agent.ExecutorUnavailableException e)
        {
            throw new PushException($"cannot push to {target}: {e.Detail} (is the account's push key, kiln account push-key, in its authorized_keys?)", inner: e);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private ICacheWriter Open(PushTarget target, string account, Netrc netrc)
    {
        switch (target.Kind)
        {
            case PushTargetKind.File:
                // Each account writes under its own directory of a root: ROOT/ACCOUNT or below, never another's.
                var directory = Path.GetFullPath(target.Location.LocalPath) + "/";
                if (!_options.FileRoots.Any(root => directory.StartsWith(Path.Combine(Path.GetFullPath(root), account) + "/", StringComparison.Ordinal)))
                {
                    throw new PushException($"'{target}' is not in a directory this server pushes into for the account: ROOT/{account}/… under a " +
                        "root the operator names with --push-file-root", permanent: true);
                }

                return new FileCacheWriter(directory.TrimEnd('/'));
            case PushTargetKind.Http:
                var root = new Uri(target.Base.TrimEnd('/') + "/");
                return new HttpCacheWriter(_http, root, netrc.For(root.Host));
            default:
                var location = S3BlobLocation.Parse(target.Base);
                var host = location.Endpoint?.Host ?? "s3.amazonaws.com";
                var credentials = netrc.For(host)
                    ?? throw new PushException($"the account's netrc has no credentials for '{host}' (machine {host} login ACCESS_KEY_ID password SECRET_ACCESS_KEY)", permanent: true);
                var config = location.ClientConfig();
                config.HttpClientFactory = new GuardedClientFactory(_handler);
                config.IgnoreConfiguredEndpointUrls = true; // (the operator's AWS_ENDPOINT_URL_S3 is the operator's, not a tenant's)
                return new S3CacheWriter(new AmazonS3Client(new BasicAWSCredentials(credentials.UserName, credentials.Password), config), location.Bucket, location.Prefix, _options.TemporaryDirectory);
        }
    }

    public void Dispose()
    {
        _freed.Dispose();
        _http.Dispose();
        _handler.Dispose();
    }

    // The S3 client's connections go through the same guard as HTTP targets'.
    private sealed class GuardedClientFactory(SocketsHttpHandler handler) : HttpClientFactory
    {
        public override HttpClient CreateHttpClient(IClientConfig clientConfig) => new(handler, disposeHandler: false);

        public override bool DisposeHttpClientsAfterUse(IClientConfig clientConfig) => false;

        public override bool UseSDKHttpClientCaching(IClientConfig clientConfig) => false;
    }

    [LoggerMessage(EventId = LogEvents.PushDone, Level = LogLevel.Information, Message = "push {Id} of build {Build}: {Uploaded} paths uploaded to {Target}")]
    private static partial void LogDone(ILogger logger, long id, long build, int uploaded, string target);

    [LoggerMessage(EventId = LogEvents.PushWillRetry, Level = LogLevel.Warning, Message = "push {Id} of build {Build} to {Target} failed, tried again in {Seconds} s: {Reason}")]
    private static partial void LogWillRetry(ILogger logger, long id, long build, string target, double seconds, string reason);

    [LoggerMessage(EventId = LogEvents.PushFailed, Level = LogLevel.Warning, Message = "push {Id} of build {Build} to {Target} given up after {Attempts} tries: {Reason}")]
    private static partial void LogFailed(ILogger logger, long id, long build, string target, int attempts, string reason);

    [LoggerMessage(EventId = LogEvents.PushUnexpected, Level = LogLevel.Error, Message = "push {Id} failed inside Kiln")]
    private static partial void LogUnexpected(ILogger logger, long id, Exception exception);
}
