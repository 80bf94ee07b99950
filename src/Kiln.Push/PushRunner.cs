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
/// a claim is a lease in the database.
/// </summary>
public sealed partial class PushRunner : IDisposable
{
    private const int ClaimedAtOnce = 4;

    private readonly KilnStore _store;
    private readonly PushOptions _options;
    private readonly ILogger _logger;
    private readonly SocketsHttpHandler _handler;
    private readonly HttpClient _http;
    private readonly ClosurePusher _pusher;

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

    /// <summary>Runs the pushes due now (a few at a time); returns how many it ran.</summary>
    public async Task<int> RunDueAsync(CancellationToken cancellationToken)
    {
        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var claimed = await _store.Pushes.ClaimPushesAsync(now, now + (long)_options.AttemptTimeout.TotalSeconds + 60, ClaimedAtOnce, cancellationToken).ConfigureAwait(false);
        await Task.WhenAll(claimed.Select(push => RunAsync(push, cancellationToken))).ConfigureAwait(false);
        return claimed.Count;
    }

    private async Task RunAsync(PushRecord push, CancellationToken cancellationToken)
    {
        var target = push.Target;
        try
        {
            using var attempt = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            attempt.CancelAfter(_options.AttemptTimeout);
            var uploaded = await PushAsync(push, attempt.Token).ConfigureAwait(false);
            await _store.Pushes.FinishPushAsync(push.Id, PushState.Done, uploaded, "", 0, CancellationToken.None).ConfigureAwait(false);
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
        var last = permanent || push.Attempts >= _options.MaxAttempts;
        var wait = TimeSpan.FromSeconds(Math.Min(3600, _options.RetryBase.TotalSeconds * Math.Pow(2, Math.Max(0, push.Attempts - 1))));
        var retryAt = DateTimeOffset.UtcNow.Add(wait).ToUnixTimeSeconds();
        await _store.Pushes.FinishPushAsync(push.Id, last ? PushState.Failed : PushState.Queued, 0, message, last ? 0 : retryAt, CancellationToken.None).ConfigureAwait(false);
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
        var secret = await _store.Accounts.GetSigningKeyAsync(push.AccountId, cancellationToken).ConfigureAwait(false)
            ?? throw new PushException("the account has no signing key to sign what it pushes (kiln signing-key create, or the shell's signing-key create)", permanent: true);
        var upstream = await _store.Settings.GetUpstreamSettingsAsync(push.AccountId, cancellationToken).ConfigureAwait(false);
        using var cache = Open(target, Netrc.Parse(upstream.Netrc));
        using var view = _store.OpenView(KilnStore.ReaderFor(push.AccountId));
        var paths = push.Paths.Select(StorePath.FromBaseName).ToList();
        return await _pusher.PushAsync(view, paths, cache, target, SecretKey.Parse(secret), cancellationToken).ConfigureAwait(false);
    }

    private ICacheWriter Open(PushTarget target, Netrc netrc)
    {
        switch (target.Kind)
        {
            case PushTargetKind.File:
                var directory = Path.GetFullPath(target.Location.LocalPath);
                if (!_options.FileRoots.Any(root => directory.StartsWith(Path.TrimEndingDirectorySeparator(Path.GetFullPath(root)) + "/", StringComparison.Ordinal)))
                {
                    throw new PushException($"'{target}' is not under a directory this server pushes into (the operator names them with --push-file-root)", permanent: true);
                }

                return new FileCacheWriter(directory);
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
                return new S3CacheWriter(new AmazonS3Client(new BasicAWSCredentials(credentials.UserName, credentials.Password), config), location.Bucket, location.Prefix, _options.TemporaryDirectory);
        }
    }

    public void Dispose()
    {
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
