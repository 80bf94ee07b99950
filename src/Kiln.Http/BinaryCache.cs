using System.Globalization;
using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Kiln.Http;

/// <summary>
/// Kiln's store as a Nix binary cache (Nix's HTTP binary cache layout): <c>nix-cache-info</c>, <c>HASH.narinfo</c>,
/// <c>nar/NARHASH.nar</c> (uncompressed, straight from the blob store, with ranges), <c>HASH.ls</c> listings and
/// <c>log/DRV</c> build logs, each answered from the caller's views only; and uploads as Nix's own HTTP store writes
/// them (PUT of the NAR, then of its narinfo). Anything outside the caller's views is a 404, exactly as a path
/// nobody has: knowing a store path gives nothing.
/// </summary>
public sealed partial class BinaryCache
{
    private readonly KilnStore _store;
    private readonly BinaryCacheOptions _options;
    private readonly ILogger _logger;
    private readonly NarUploads _uploads;
    private readonly byte[] _cacheInfo;
    private readonly NarInfoCache _narInfos;

    private const string NarInfoType = "text/x-nix-narinfo";

    public BinaryCache(KilnStore store, BinaryCacheOptions options, ILogger logger)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(options);
        _store = store;
        _options = options;
        _logger = logger;
        _uploads = new NarUploads(options);
        _narInfos = new NarInfoCache(() => store.PathRecordsVersion);
        _cacheInfo = Encoding.ASCII.GetBytes(string.Create(CultureInfo.InvariantCulture,
            $"StoreDir: {StorePath.StoreDir}\nWantMassQuery: 1\nPriority: {options.Priority}\n"));
    }

    /// <summary>Answers one request. Kiln's errors are mapped to statuses in one place (<see cref="ErrorKinds.HttpStatus"/>); anything else is logged with the request and answered 500.</summary>
    public async Task HandleAsync(HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        var request = context.Request;
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            await HandleCoreAsync(context).ConfigureAwait(false);
        }
        catch (KilnException e) when (!context.Response.HasStarted)
        {
            await TextAsync(context, ErrorKinds.HttpStatus(e.Kind), e.Message + "\n").ConfigureAwait(false);
        }
        catch (IOException e) when (StorageFailure.Describe(e) is { } storage && !context.Response.HasStarted)
        {
            LogStorageFailure(_logger, request.Method, request.Path.Value ?? "/", e);
            await TextAsync(context, StatusCodes.Status503ServiceUnavailable, storage + "\n").ConfigureAwait(false);
        }
        catch (Exception e) when (e is not OperationCanceledException || !context.RequestAborted.IsCancellationRequested)
        {
            // A bug or a broken store, not the client's doing: never lost, never a stack trace to the client.
            LogUnhandled(_logger, request.Method, request.Path.Value ?? "/", e);
            if (context.Response.HasStarted)
            {
                context.Abort();
                return;
            }

            await TextAsync(context, StatusCodes.Status500InternalServerError, "internal error in Kiln; the server's log says more\n").ConfigureAwait(false);
        }
        finally
        {
            Measure(context, System.Diagnostics.Stopwatch.GetElapsedTime(started));
        }
    }

    // One request in the metrics: its kind and status class (never its path), how long it took, and the bytes whose
    // count is known (bodies with a length: NARs both ways, narinfo).
    private static void Measure(HttpContext context, TimeSpan took)
    {
        var request = context.Request;
        var kind = RouteOf(request) switch
        {
            Route.CacheInfo => KilnMetrics.HttpKinds.CacheInfo,
            Route.Nar => KilnMetrics.HttpKinds.Nar,
            Route.Log => KilnMetrics.HttpKinds.Log,
            Route.NarInfo => KilnMetrics.HttpKinds.NarInfo,
            Route.Upload => KilnMetrics.HttpKinds.Upload,
            _ => KilnMetrics.HttpKinds.Other,
        };
        var status = context.Response.StatusCode;
        KilnMetrics.HttpRequestDuration.Record(took.TotalSeconds, new KeyValuePair<string, object?>("kind", kind),
            new KeyValuePair<string, object?>("status", KilnMetrics.StatusClass(status)));
        if (status is >= 200 and < 300)
        {
            var protocol = KilnMetrics.ProtocolTag(KilnMetrics.Protocols.Http);
            if (!HttpMethods.IsHead(request.Method) && context.Response.ContentLength is > 0 and var sent)
            {
                KilnMetrics.BytesSent.Add(sent, protocol);
            }

            if (request.ContentLength is > 0 and var received)
            {
                KilnMetrics.BytesReceived.Add(received, protocol);
            }
        }
    }

    // What a request asks for, by its method and path: the one place both the answer and the metrics read it from.
    private enum Route
    {
        CacheInfo,
        Nar,
        Log,
        NarInfo,
        Listing,
        Upload,
        OtherMethod,
        NotFound,
    }

    private static Route RouteOf(HttpRequest request)
    {
        var path = request.Path.Value ?? "/";
        if (!HttpMethods.IsGet(request.Method) && !HttpMethods.IsHead(request.Method))
        {
            return HttpMethods.IsPut(request.Method) ? Route.Upload : Route.OtherMethod;
        }

        return path == "/nix-cache-info" ? Route.CacheInfo
            : path.StartsWith("/nar/", StringComparison.Ordinal) ? Route.Nar
            : path.StartsWith("/log/", StringComparison.Ordinal) ? Route.Log
            : path.EndsWith(".narinfo", StringComparison.Ordinal) ? Route.NarInfo
            : path.EndsWith(".ls", StringComparison.Ordinal) ? Route.Listing
            : Route.NotFound;
    }

    private async Task HandleCoreAsync(HttpContext context)
    {
        var request = context.Request;
        var cancellationToken = context.RequestAborted;
        var caller = await CacheCaller.IdentifyAsync(request, _store, cancellationToken).ConfigureAwait(false);
        if (caller is null)
        {
            context.Response.Headers.WWWAuthenticate = "Basic realm=\"kiln\"";
            await TextAsync(context, StatusCodes.Status401Unauthorized, "this token is not valid (unknown, revoked or expired)\n").ConfigureAwait(false);
            return;
        }

        // Every answer comes from the caller's view: what it may read, the store decided.
        using var view = _store.OpenView(caller);
        var path = request.Path.Value ?? "/";
        switch (RouteOf(request))
        {
            case Route.CacheInfo:
                await BytesAsync(context, "text/x-nix-cache-info", _cacheInfo).ConfigureAwait(false);
                break;
            case Route.Nar:
                await NarAsync(context, view, path[5..]).ConfigureAwait(false);
                break;
            case Route.Log:
                await LogAsync(context, view, path[5..]).ConfigureAwait(false);
                break;
            case Route.NarInfo:
                await NarInfoAsync(context, view, HashPart(path[1..^8])).ConfigureAwait(false);
                break;
            case Route.Listing:
                await ListingAsync(context, view, HashPart(path[1..^3])).ConfigureAwait(false);
                break;
            case Route.Upload:
                await PutAsync(context, view, path).ConfigureAwait(false);
                break;
            case Route.OtherMethod:
                context.Response.Headers.Allow = "GET, HEAD, PUT";
                await TextAsync(context, StatusCodes.Status405MethodNotAllowed, "Kiln's binary cache answers GET, HEAD and PUT\n").ConfigureAwait(false);
                break;
            default:
                await NotFoundAsync(context).ConfigureAwait(false);
                break;
        }
    }

    // A store path's hash part: 32 Nix32 digits.
    private static string HashPart(string text) =>
        StorePath.IsHashPart(text) ? text : throw new KilnException(ErrorKind.Invalid, $"'{text}' is not a store path hash");

    private async Task NarInfoAsync(HttpContext context, StoreView view, string hashPart)
    {
        // A narinfo asked for is a use of its path by the account whose record answers (its retention counts from now).
        var reader = view.Caller.ReadableKey;
        if (_narInfos.Find(reader, hashPart, out var owner) is { } kept)
        {
            if (owner is { } known)
            {
                view.MarkRead(known.Account, known.Path);
            }

            await BytesAsync(context, NarInfoType, kept).ConfigureAwait(false);
            return;
        }

        var version = _narInfos.Version;
        if (await view.FindReadableByHashPartAsync(hashPart, context.RequestAborted).ConfigureAwait(false) is not { } found)
        {
            await NotFoundAsync(context).ConfigureAwait(false);
            return;
        }

        var info = found.Record.Info;
        var narFile = info.NarHash.ToNix32();
        var narInfo = NarInfo.Of(info, $"nar/{narFile}.nar", "none", info.NarHash, info.NarSize);
        var body = Encoding.UTF8.GetBytes(narInfo.ToString());
        _narInfos.Add(reader, hashPart, body, version, (found.Account, info.Path), narFile);
        view.MarkRead(found.Account, info.Path);
        await BytesAsync(context, NarInfoType, body).ConfigureAwait(false);
    }

    private async Task NarAsync(HttpContext context, StoreView view, string file)
    {
        // Only nar/<NAR hash>.nar names a blob, and only when a path in the caller's view has that NAR; other names
        // are compressed files kept as uploaded.
        var narHash = default(NixHash);
        var narName = file.EndsWith(".nar", StringComparison.Ordinal) ? file[..^4] : null;
        var isBlob = narName is not null && TryNarHash(narName, out narHash);
        // A NAR whose narinfo this view was just answered (a client asks for both, in that order) needs no second
        // lookup of the same record: the kept answer vouches for it, under the same rules it is kept by.
        var shown = isBlob && _narInfos.ShowsNar(view.Caller.ReadableKey, narName!);
        // GET only: a presigned URL is signed for GET, and Nix asks with HEAD whether a NAR exists before uploading one.
        if (isBlob && HttpMethods.IsGet(context.Request.Method) && _options.NarRedirect is { } lifetime
            && (shown ? view.LinkShownNar(narHash, lifetime) : await view.LinkNarByHashAsync(narHash, lifetime, context.RequestAborted).ConfigureAwait(false)) is { } link)
        {
            // Checked like the bytes would be (the caller may read this NAR), then sent to the bucket for them. The
            // client checks what it gets against the NAR hash in the narinfo, as it does any download. Never cached:
            // the URL expires.
            context.Response.StatusCode = StatusCodes.Status307TemporaryRedirect;
            context.Response.Headers.Location = link.AbsoluteUri;
            context.Response.Headers.CacheControl = "no-store";
            context.Response.ContentLength = 0;
            return;
        }

        var blob = shown ? await view.OpenShownNarAsync(narHash, context.RequestAborted).ConfigureAwait(false)
            : isBlob ? await view.OpenNarByHashAsync(narHash, context.RequestAborted).ConfigureAwait(false)
            : NarUploads.IsNarFileName(file) ? await view.OpenKeptNarFileAsync(file, context.RequestAborted).ConfigureAwait(false) : null;
        if (blob is null)
        {
            await NotFoundAsync(context).ConfigureAwait(false);
            return;
        }

        await using (blob.ConfigureAwait(false))
        {
            await BlobResponse.WriteAsync(context, blob, "application/x-nix-nar").ConfigureAwait(false);
            if (HttpMethods.IsGet(context.Request.Method) && context.Response.StatusCode is StatusCodes.Status200OK or StatusCodes.Status206PartialContent)
            {
                view.CountDownload(context.Response.ContentLength ?? blob.Length);
            }
        }
    }

    internal static bool TryNarHash(string text, out NixHash hash)
    {
        hash = default;
        if (text.Length != Nix32.EncodedLength(32) || !text.All(Nix32.IsDigit))
        {
            return false;
        }

        var digest = new byte[32];
        if (!Nix32.TryDecode(text, digest))
        {
            return false;
        }

        hash = new NixHash(NixHashAlgorithm.Sha256, digest);
        return true;
    }

    private static async Task ListingAsync(HttpContext context, StoreView view, string hashPart)
    {
        var cancellationToken = context.RequestAborted;
        var blob = await view.FindByHashPartAsync(hashPart, cancellationToken).ConfigureAwait(false) is { Info: var info }
            ? await view.OpenNarByHashAsync(info.NarHash, cancellationToken).ConfigureAwait(false)
            : null;
        if (blob is null)
        {
            await NotFoundAsync(context).ConfigureAwait(false);
            return;
        }

        var text = new StringWriter(CultureInfo.InvariantCulture);
        await using (blob.ConfigureAwait(false))
        {
            var nar = new BufferedStream(await blob.OpenStreamAsync(cancellationToken).ConfigureAwait(false), 1 << 16);
            NarListing.WriteBinaryCacheListing(nar, text);
        }

        await BytesAsync(context, "application/json", Encoding.UTF8.GetBytes(text.ToString())).ConfigureAwait(false);
    }

    private static async Task LogAsync(HttpContext context, StoreView view, string baseName)
    {
        // The log of the latest build of that derivation that was for one of the caller's accounts.
        var log = StorePath.IsValidBaseName(baseName) && baseName.EndsWith(".drv", StringComparison.Ordinal)
            ? await view.OpenDerivationLogAsync(StorePath.FromBaseName(baseName), context.RequestAborted).ConfigureAwait(false)
            : null;
        if (log is null)
        {
            await NotFoundAsync(context).ConfigureAwait(false);
            return;
        }

        await using (log.ConfigureAwait(false))
        {
            context.Response.ContentType = "text/plain; charset=utf-8";
            context.Response.ContentLength = log.Length - log.Position;
            if (!HttpMethods.IsHead(context.Request.Method))
            {
                await log.CopyToAsync(context.Response.Body, context.RequestAborted).ConfigureAwait(false);
            }
        }
    }

    private async Task PutAsync(HttpContext context, StoreView view, string path)
    {
        var caller = view.Caller;
        if (caller.AccountId is not { } account)
        {
            context.Response.Headers.WWWAuthenticate = "Basic realm=\"kiln\"";
            await TextAsync(context, StatusCodes.Status401Unauthorized, "uploading needs a token with store:write\n").ConfigureAwait(false);
            return;
        }

        if (!caller.Can(Kiln.Store.Accounts.KeyPermissions.StoreWrite))
        {
            await TextAsync(context, StatusCodes.Status403Forbidden, "this token lacks the store:write permission\n").ConfigureAwait(false);
            return;
        }

        if (path.StartsWith("/nar/", StringComparison.Ordinal))
        {
            await _uploads.StageAsync(account, path[5..], context.Request.Body, context.RequestAborted).ConfigureAwait(false);
            await TextAsync(context, StatusCodes.Status200OK, "").ConfigureAwait(false);
        }
        else if (path.EndsWith(".narinfo", StringComparison.Ordinal))
        {
            var hashPart = HashPart(path[1..^8]);
            var stored = await _uploads.CommitAsync(view, hashPart, context.Request.Body, context.RequestAborted).ConfigureAwait(false);
            LogUploaded(_logger, view.AccountName, stored);
            await TextAsync(context, StatusCodes.Status200OK, "").ConfigureAwait(false);
        }
        else if (path.EndsWith(".ls", StringComparison.Ordinal))
        {
            // Nix writes listings when write-nar-listing is set; Kiln makes its own from the NAR, so this one is not kept.
            HashPart(path[1..^3]);
            await TextAsync(context, StatusCodes.Status200OK, "").ConfigureAwait(false);
        }
        else
        {
            await TextAsync(context, StatusCodes.Status403Forbidden, "Kiln's binary cache takes NARs and narinfo files (and keeps its own build logs)\n").ConfigureAwait(false);
        }
    }

    [LoggerMessage(EventId = LogEvents.StorageFailed, Level = LogLevel.Error, Message = "http: {Method} {Path}: Kiln's storage failed")]
    private static partial void LogStorageFailure(ILogger logger, string method, string path, Exception exception);

    [LoggerMessage(EventId = LogEvents.HttpUnhandled, Level = LogLevel.Error, Message = "http: {Method} {Path} failed inside Kiln")]
    private static partial void LogUnhandled(ILogger logger, string method, string path, Exception exception);

    [LoggerMessage(EventId = LogEvents.HttpUploaded, Level = LogLevel.Information, Message = "http: {Account} uploaded {Path}")]
    private static partial void LogUploaded(ILogger logger, string account, StorePath path);

    private static Task NotFoundAsync(HttpContext context) => TextAsync(context, StatusCodes.Status404NotFound, "not found\n");

    private static Task TextAsync(HttpContext context, int status, string text)
    {
        context.Response.StatusCode = status;
        return BytesAsync(context, "text/plain; charset=utf-8", Encoding.UTF8.GetBytes(text), status);
    }

    private static async Task BytesAsync(HttpContext context, string contentType, byte[] body, int status = StatusCodes.Status200OK)
    {
        var response = context.Response;
        response.StatusCode = status;
        response.ContentType = contentType;
        response.ContentLength = body.Length;
        if (!HttpMethods.IsHead(context.Request.Method))
        {
            await response.Body.WriteAsync(body, context.RequestAborted).ConfigureAwait(false);
        }
    }
}
