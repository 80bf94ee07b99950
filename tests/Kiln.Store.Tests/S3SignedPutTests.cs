using System.Net;
using System.Net.Sockets;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Blobs;

namespace Kiln.Store.Tests;

/// <summary>
/// The S3 store's own signed PUT against a server that refuses it the way real ones do when they want something else
/// (Garage before its checksum rework answered a body it doubted with "400 InvalidRequest", not a digest error): the
/// PUT goes again through the SDK, and after three such refusals every PUT does; but the SDK, which signs whatever the
/// spool file holds, is never handed a spool damaged since it was hashed. The server here is a stand-in by necessity
/// (no real server refuses this way on demand); radosgw's real answers are tested in RadosBlobStoreTests.
/// </summary>
public sealed class S3SignedPutTests : IDisposable
{
    private readonly TempDir _temp = new();
    private readonly HttpListener _listener = new();
    private readonly List<string> _requests = [];
    private readonly Dictionary<string, byte[]> _objects = [];
    private (int Status, string Code) _refusal = (400, "InvalidRequest");

    public S3SignedPutTests()
    {
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        Port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        _listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
        _listener.Start();
        _ = Task.Run(async () =>
        {
            while (_listener.IsListening)
            {
                HttpListenerContext context;
                try
                {
                    context = await _listener.GetContextAsync();
                }
                catch (Exception) when (!_listener.IsListening)
                {
                    return;
                }

                Serve(context);
            }
        });
    }

    private int Port { get; }

    // The SDK's PUTs are stored (their ETag the MD5, as S3's); Kiln's own are refused as not understood; HEAD answers the size.
    private void Serve(HttpListenerContext context)
    {
        var path = context.Request.Url!.AbsolutePath;
        var bySdk = context.Request.Headers["amz-sdk-invocation-id"] is not null;
        using var response = context.Response;
        lock (_requests)
        {
            _requests.Add($"{context.Request.HttpMethod} {(bySdk ? "sdk" : "kiln")}");
            if (context.Request.HttpMethod == "PUT" && bySdk)
            {
                using var body = new MemoryStream();
                context.Request.InputStream.CopyTo(body);
                _objects[path] = body.ToArray();
                response.Headers["ETag"] = $"\"{Kiln.Nix.Hashing.NixHash.Compute(Kiln.Nix.Hashing.NixHashAlgorithm.Md5, body.ToArray()).ToBase16()}\"";
            }
            else if (context.Request.HttpMethod == "PUT")
            {
                context.Request.InputStream.CopyTo(Stream.Null);
                response.StatusCode = _refusal.Status;
                response.OutputStream.Write(System.Text.Encoding.UTF8.GetBytes($"<?xml version=\"1.0\"?><Error><Code>{_refusal.Code}</Code></Error>"));
            }
            else if (context.Request.HttpMethod == "HEAD" && _objects.TryGetValue(path, out var stored))
            {
                response.ContentLength64 = stored.Length;
            }
            else
            {
                response.StatusCode = 404;
            }
        }
    }

    private string[] Requests()
    {
        lock (_requests)
        {
            var all = _requests.ToArray();
            _requests.Clear();
            return all;
        }
    }

    private S3BlobStore Create()
    {
        var credentials = _temp["credentials"];
        File.WriteAllText(credentials, "[default]\naws_access_key_id = FAKEACCESSKEY\naws_secret_access_key = fake-secret\n");
        var location = $"s3://fake/kiln?endpoint={Uri.EscapeDataString($"http://127.0.0.1:{Port}")}&credentials_file={Uri.EscapeDataString(credentials)}";
        return new S3BlobStore(S3BlobLocation.Parse(location), new LocalBlobCache(_temp["cache"], 64L << 20));
    }

    // A store whose probe (does the server check bodies? a refusal for another reason says no) has been answered.
    private async Task<S3BlobStore> CreateProbedAsync()
    {
        var store = Create();
        Assert.False(await store.ChecksBodiesAsync());
        Assert.Equal(["PUT kiln"], Requests());
        return store;
    }

    // A refusal of the request, not of its body: as old Garage doubted a body, or as AWS sends a bucket in another
    // region elsewhere (a redirect, not followed: the SDK knows where to go).
    [Theory]
    [InlineData(400, "InvalidRequest")]
    [InlineData(301, "PermanentRedirect")]
    public async Task A_refused_signed_put_goes_through_the_SDK_and_after_three_the_SDK_does_them_all(int status, string code)
    {
        _refusal = (status, code);
        using var store = await CreateProbedAsync();
        for (var i = 0; i < 4; i++)
        {
            await using var writer = store.CreateWriter();
            writer.Write(BlobStoreContract.Bytes(10_000, i));
            await writer.CompleteAsync(default);
            await writer.CommitAsync(default);
            Assert.Equal(i < 3 ? ["PUT kiln", "PUT sdk"] : ["PUT sdk"], Requests());
        }
    }

    [Fact]
    public async Task The_SDK_is_never_handed_a_spool_damaged_since_it_was_hashed()
    {
        using var store = await CreateProbedAsync();
        await using var writer = store.CreateWriter();
        writer.Write(BlobStoreContract.Bytes(10_000, 9));
        await writer.CompleteAsync(default);
        var spool = Assert.Single(Directory.GetFiles(Path.Combine(_temp["cache"], "tmp")));
        var bytes = await File.ReadAllBytesAsync(spool);
        bytes[100] ^= 1;
        await File.WriteAllBytesAsync(spool, bytes);

        var refused = await Assert.ThrowsAsync<IOException>(() => writer.CommitAsync(default).AsTask());
        Assert.Contains("not what was received", refused.Message, StringComparison.Ordinal);
        Assert.Equal(["PUT kiln"], Requests());
        Assert.Empty(_objects);
    }

    public void Dispose()
    {
        _listener.Close();
        _temp.Dispose();
    }
}
