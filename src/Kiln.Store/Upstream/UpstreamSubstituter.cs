using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Kiln.Nix;
using Kiln.Nix.Compression;
using Kiln.Nix.Signing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;

namespace Kiln.Store.Upstream;

/// <summary>
/// Substitution on the farm side: Kiln asks its accounts' upstream binary caches for paths (narinfo), trusts only what
/// a trusted key signed for exactly that path, downloads the NAR itself (never through the client), verifies NAR hash
/// and size while it streams into the blob store, and registers the path, references first, in the account's view.
/// Content is stored once, but knowing a NAR hash never yields content: a NAR is taken from the blob store only when the
/// account can already read it, and otherwise downloaded (once per cache and NAR, however many sessions want it). Any upstream failure (unreachable, 5xx, timeout, bad signature, wrong hash, cut short) is a warning
/// and the path is simply not substituted, so the caller falls back to building.
/// </summary>
public sealed class UpstreamSubstituter : IDisposable
{
    private static readonly TimeSpan Found = TimeSpan.FromMinutes(10);
    private static readonly TimeSpan Missing = TimeSpan.FromSeconds(30);

    private readonly HttpClient _http;
    private readonly ConcurrentDictionary<(Uri Cache, string HashPart), (NarInfo? Info, DateTime Until)> _narInfos = new();
    private readonly ConcurrentDictionary<string, Task> _downloads = new();

    /// <summary>How many narinfo answers are remembered: expired ones are dropped when there are this many, all if none expired.</summary>
    public int MaxNarInfos { get; init; } = 50_000;

    public UpstreamSubstituter(HttpMessageHandler? handler = null)
    {
        _http = new HttpClient(handler ?? new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(10),
            PooledConnectionLifetime = TimeSpan.FromMinutes(5),
            AutomaticDecompression = DecompressionMethods.None,
        })
        {
            Timeout = Timeout.InfiniteTimeSpan, // per request below: short for narinfo, idle-based for NARs
        };
        _http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("kiln", "0.1"));
    }

    /// <summary>How long a NAR download may go without receiving a byte.</summary>
    public TimeSpan ReadTimeout { get; init; } = TimeSpan.FromSeconds(30);

    public void Dispose() => _http.Dispose();

    /// <summary>A trusted narinfo for <paramref name="path"/> from the first of the plan's caches that has one, or null.</summary>
    public async Task<(UpstreamCache Cache, NarInfo Info)?> LookupAsync(UpstreamPlan plan, StorePath path, Action<string> warn, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(plan);
        foreach (var cache in plan.Caches)
        {
            var info = await NarInfoAsync(cache, path.HashPart, warn, cancellationToken).ConfigureAwait(false);
            if (info is null)
            {
                continue;
            }

            if (info.StorePath != path)
            {
                warn($"substituter '{cache.Url}' answered for '{path}' with '{info.StorePath}'; not using it");
                continue;
            }

            var fingerprint = info.Fingerprint();
            if (!plan.TrustedKeys.Any(key => info.Signatures.Any(signature => key.Verify(fingerprint, signature))))
            {
                warn($"'{path}' from substituter '{cache.Url}' is not signed by a key you trust; building it instead");
                continue;
            }

            return (cache, info);
        }

        return null;
    }

    private async Task<NarInfo?> NarInfoAsync(UpstreamCache cache, string hashPart, Action<string> warn, CancellationToken cancellationToken)
    {
        // Only public caches' answers are remembered: what credentials fetched is that account's alone.
        var key = (cache.Url, hashPart);
        if (cache.IsPublic && _narInfos.TryGetValue(key, out var known) && known.Until > DateTime.UtcNow)
        {
            return known.Info;
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(20));
        try
        {
            using var response = await _http.SendAsync(Request(cache, $"{hashPart}.narinfo"), timeout.Token).ConfigureAwait(false);
            if (response.StatusCode is HttpStatusCode.NotFound or HttpStatusCode.Forbidden)
            {
                Remember(cache, key, null, Missing);
                return null;
            }

            response.EnsureSuccessStatusCode();
            var text = await response.Content.ReadAsStringAsync(timeout.Token).ConfigureAwait(false);
            var info = NarInfo.Parse(text, $"{cache.Url}{hashPart}.narinfo");
            Remember(cache, key, info, Found);
            return info;
        }
        catch (Exception e) when (e is HttpRequestException or NixFormatException || (e is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            warn($"substituter '{cache.Url}' failed for '{hashPart}': {Reason(e)}");
            return null;
        }
    }

    private void Remember(UpstreamCache cache, (Uri, string) key, NarInfo? info, TimeSpan lifetime)
    {
        if (!cache.IsPublic)
        {
            return;
        }

        if (_narInfos.Count >= MaxNarInfos)
        {
            var now = DateTime.UtcNow;
            foreach (var expired in _narInfos.Where(e => e.Value.Until <= now).ToList())
            {
                _narInfos.TryRemove(expired);
            }

            if (_narInfos.Count >= MaxNarInfos)
            {
                _narInfos.Clear();
            }
        }

        _narInfos[key] = (info, DateTime.UtcNow + lifetime);
    }

    /// <summary>How many narinfo answers are remembered (tests check the bound).</summary>
    internal int RememberedNarInfos => _narInfos.Count;

    private static HttpRequestMessage Request(UpstreamCache cache, string relative)
    {
        var request = new HttpRequestMessage(HttpMethod.Get, new Uri(cache.Url, relative));
        if (cache.Credentials is { } credentials)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Basic",
                Convert.ToBase64String(Encoding.UTF8.GetBytes($"{credentials.UserName}:{credentials.Password}")));
        }

        return request;
    }

    private static string Reason(Exception e) => e switch
    {
        OperationCanceledException => "timed out",
        HttpRequestException { StatusCode: { } status } => $"HTTP {(int)status}",
        _ => e.Message,
    };

    /// <summary>
    /// Substitutes what it can of <paramref name="paths"/> (with their closures) into <paramref name="view"/>; returns
    /// the paths that are valid in the view afterwards. A path is substituted only if its whole missing closure is.
    /// </summary>
    public async Task<IReadOnlySet<StorePath>> SubstituteAsync(StoreView view, UpstreamPlan plan, IReadOnlyCollection<StorePath> paths,
        Action<string> warn, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(view);
        ArgumentNullException.ThrowIfNull(paths);
        var valid = new HashSet<StorePath>(await view.QueryValidPathsAsync(paths, cancellationToken).ConfigureAwait(false));
        if (plan.Caches.Count == 0 || valid.Count == paths.Count)
        {
            return valid;
        }

        // The missing closure, found level by level from the caches' narinfo files.
        var found = new Dictionary<StorePath, (UpstreamCache Cache, NarInfo Info)>();
        var unavailable = new HashSet<StorePath>();
        var frontier = paths.Where(p => !valid.Contains(p)).Distinct().ToList();
        while (frontier.Count > 0)
        {
            var present = await view.QueryValidPathsAsync(frontier, cancellationToken).ConfigureAwait(false);
            var next = new List<StorePath>();
            foreach (var path in frontier.Where(p => !present.Contains(p) && !found.ContainsKey(p) && !unavailable.Contains(p)))
            {
                if (await LookupAsync(plan, path, warn, cancellationToken).ConfigureAwait(false) is { } hit)
                {
                    found[path] = hit;
                    next.AddRange(hit.Info.References.Where(r => r != path));
                }
                else
                {
                    unavailable.Add(path);
                }
            }

            frontier = next.Distinct().ToList();
        }

        // References first; a path whose closure cannot be completed is left for the caller to build.
        var failed = new HashSet<StorePath>(unavailable);
        foreach (var path in Graph.Order(found.Keys, p => found[p].Info.References.Where(r => r != p), found.Keys.ToHashSet()))
        {
            var (cache, info) = found[path];
            if (info.References.Any(failed.Contains))
            {
                failed.Add(path);
                continue;
            }

            if (!await FetchAsync(view, cache, info, plan.TrustOf(info), warn, cancellationToken).ConfigureAwait(false))
            {
                failed.Add(path);
            }
        }

        return new HashSet<StorePath>(await view.QueryValidPathsAsync(paths, cancellationToken).ConfigureAwait(false));
    }

    // One path into the view. Knowing a NAR hash never yields content: the bytes come from a blob this account can
    // already read, or from this cache — downloaded once per (cache, NAR) however many sessions want it, and shared
    // only where the cache answers everyone alike (a public cache, fetched without credentials).
    private async Task<bool> FetchAsync(StoreView view, UpstreamCache cache, NarInfo narInfo, Metadata.PathTrust trust, Action<string> warn, CancellationToken cancellationToken)
    {
        var path = narInfo.StorePath;
        var info = narInfo.ToValidPathInfo();
        try
        {
            if (!await view.CanReadNarAsync(narInfo.NarHash, cancellationToken).ConfigureAwait(false))
            {
                // Joiners take the blob under their own narinfo's hash afterwards, so they may join only a download of
                // exactly that NAR (hash, size, compression), never merely of the same URL.
                var key = $"{cache.Url}\n{narInfo.Url}\n{narInfo.Compression}\n{narInfo.NarHash.ToNix32()}\n{narInfo.NarSize}"
                    + (cache.IsPublic ? "" : $"\n{view.AccountId}");
                var download = _downloads.GetOrAdd(key, _ => DownloadAsync(view, cache, info, narInfo, trust));
                try
                {
                    await download.WaitAsync(cancellationToken).ConfigureAwait(false);
                }
                finally
                {
                    _downloads.TryRemove(KeyValuePair.Create(key, download));
                }
            }

            // Joined another view's download of the same public NAR, or the content was in this view under another path.
            if (!(await view.QueryValidPathsAsync([path], cancellationToken).ConfigureAwait(false)).Contains(path))
            {
                var blob = await view.Blobs.OpenReadAsync(narInfo.NarHash, cancellationToken).ConfigureAwait(false)
                    ?? throw new IOException($"the NAR of '{path}' was collected while it was being substituted");
                await using (blob.ConfigureAwait(false))
                {
                    await view.AddSubstitutedAsync(info, await blob.OpenStreamAsync(cancellationToken).ConfigureAwait(false), trust, cancellationToken).ConfigureAwait(false);
                }
            }

            return true;
        }
        catch (Exception e) when (e is HttpRequestException or NixFormatException or KilnException or IOException
            || (e is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            warn($"substituting '{path}' failed: {Reason(e)}; building it instead");
            return false;
        }
    }

    // Streams the NAR from the cache, decompressing and verifying it into the view.
    private async Task DownloadAsync(StoreView view, UpstreamCache cache, ValidPathInfo info, NarInfo narInfo, Metadata.PathTrust trust)
    {
        using var idle = new CancellationTokenSource(ReadTimeout);
        using var response = await _http.SendAsync(Request(cache, narInfo.Url), HttpCompletionOption.ResponseHeadersRead, idle.Token).ConfigureAwait(false);
        response.EnsureSuccessStatusCode();
        var body = await response.Content.ReadAsStreamAsync(idle.Token).ConfigureAwait(false);
        await using (body.ConfigureAwait(false))
        {
            using var nar = Decompression.Open(narInfo.Compression, new IdleTimeoutStream(body, idle, ReadTimeout));
            await view.AddSubstitutedAsync(info, nar, trust, idle.Token).ConfigureAwait(false);
        }
    }

    /// <summary>Cancels the download when no byte has arrived for a while (a stalled upstream must not hang a build).</summary>
    private sealed class IdleTimeoutStream(Stream inner, CancellationTokenSource idle, TimeSpan timeout) : ReadOnlyStream
    {
        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            var n = inner.Read(buffer);
            idle.CancelAfter(timeout);
            return n;
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            var n = await inner.ReadAsync(buffer, idle.Token).ConfigureAwait(false);
            idle.CancelAfter(timeout);
            return n;
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    }
}
