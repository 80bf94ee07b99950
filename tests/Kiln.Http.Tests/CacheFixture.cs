using System.Text;
using Kiln.Nix.Tests.Support;
using Kiln.Store;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Http.Tests;

/// <summary>A store of its own and the real HTTP cache handler over it, for a test class's attacks and answers.</summary>
public abstract class CacheFixture : IAsyncLifetime
{
    private readonly TempDir _temp = new();

    protected KilnStore Store { get; private set; } = null!;

    private BinaryCache _cache = null!;

    public async ValueTask InitializeAsync()
    {
        Store = await OpenStoreAsync(new StoreOptions { DataDirectory = _temp["data"] });
        _cache = new BinaryCache(Store, new BinaryCacheOptions { StagingDirectory = _temp["staging"] }, NullLogger.Instance);
    }

    /// <summary>Opens the store the handler serves (a test class may put its own metadata port under it).</summary>
    protected virtual Task<KilnStore> OpenStoreAsync(StoreOptions options) => KilnStore.OpenAsync(options, default);

    public async ValueTask DisposeAsync()
    {
        await Store.DisposeAsync();
        _temp.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>A GET through the handler, with a bearer token or none; the status and the body as text.</summary>
    protected async Task<(int Status, string Body)> GetAsync(string url, string? token = null)
    {
        var context = new DefaultHttpContext();
        context.Request.Method = "GET";
        context.Request.Path = url;
        if (token is not null)
        {
            context.Request.Headers.Authorization = $"Bearer {token}";
        }

        var body = new MemoryStream();
        context.Response.Body = body;
        await _cache.HandleAsync(context);
        return (context.Response.StatusCode, Encoding.UTF8.GetString(body.ToArray()));
    }
}
