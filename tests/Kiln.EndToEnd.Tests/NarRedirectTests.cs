using System.Net;
using System.Net.Http.Headers;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Metadata;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// <c>kiln serve --blobs s3://… --nar-redirect</c>: the HTTP cache answers a NAR request, once it has checked the caller
/// may read that NAR, with a redirect to the bucket's presigned URL; stock Nix follows it and gets the same bytes, while
/// a caller who may not read the NAR gets no URL at all. (s3rver does not check presigned signatures; AWS does.)
/// </summary>
public sealed class NarRedirectTests(S3Server s3)
{
    [Theory]
    [MemberData(nameof(NixClient.Versions), MemberType = typeof(NixClient))]
    public async Task Nars_come_from_the_bucket_through_a_redirect_only_for_who_may_read_them(string version)
    {
        var client = NixClient.For(version);
        s3.Require();
        using var kiln = new KilnProcess(http: true, arguments: ["--blobs", s3.NewLocation(), "--nar-redirect", "--nar-redirect-lifetime", "120"]);
        using var workspace = client.NewWorkspace();
        kiln.Cli("account", "create", "alice");
        kiln.Cli("account", "create", "bob");
        var (token, netrc) = CacheAccess.Netrc(client, kiln, workspace, "alice");
        var (other, _) = CacheAccess.Netrc(client, kiln, workspace, "bob");
        var (source, top) = CacheAccess.SmallClosure(client, kiln, workspace);
        client.Ok(kiln, ["nix", "copy", "--store", source, "--to", kiln.HttpUrl, .. netrc, top]);
        client.Ok(kiln, ["nix", "copy", "--from", kiln.HttpUrl, "--to", $"local?root={workspace}/pulled", "--no-check-sigs", .. netrc, top]);
        Assert.Equal(File.ReadAllBytes(client.HostPath($"{workspace}/source{top}")), File.ReadAllBytes(client.HostPath($"{workspace}/pulled{top}")));

        // What Nix was answered: a redirect to the bucket, for alice; nothing for bob or for no one.
        string narUrl;
        await using (var metadata = MetadataStores.Open(MetadataStores.ForDataDirectory(kiln.DataDirectory), readOnly: true))
        {
            var alice = (await metadata.FindAccountAsync("alice", CancellationToken.None))!;
            var record = (await metadata.GetPathsAsync(alice.Id, [StorePath.Parse(top)], CancellationToken.None)).Values.Single();
            narUrl = $"{kiln.HttpUrl}/nar/{record.Info.NarHash.ToNix32()}.nar";
        }

        using var http = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false });
        HttpRequestMessage Get(string? user, string? password)
        {
            var request = new HttpRequestMessage(HttpMethod.Get, narUrl);
            if (user is not null)
            {
                request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(System.Text.Encoding.UTF8.GetBytes($"{user}:{password}")));
            }

            return request;
        }

        using (var redirect = await http.SendAsync(Get("alice", token)))
        {
            Assert.Equal(HttpStatusCode.TemporaryRedirect, redirect.StatusCode);
            var location = redirect.Headers.Location!;
            Assert.StartsWith(s3.Endpoint + "/", location.AbsoluteUri, StringComparison.Ordinal);
            Assert.Contains("X-Amz-Expires=120", location.Query, StringComparison.Ordinal);
            Assert.True(redirect.Headers.CacheControl!.NoStore);
        }

        // HEAD is answered here (a URL signed for GET answers HEAD with 403, and Nix asks with HEAD before uploading).
        using (var head = Get("alice", token))
        {
            head.Method = HttpMethod.Head;
            using var answer = await http.SendAsync(head);
            Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
            Assert.Null(answer.Headers.Location);
        }

        using (var bob = await http.SendAsync(Get("bob", other)))
        {
            Assert.Equal(HttpStatusCode.NotFound, bob.StatusCode);
            Assert.Null(bob.Headers.Location);
        }

        using (var anonymous = await http.SendAsync(Get(null, null)))
        {
            Assert.Equal(HttpStatusCode.NotFound, anonymous.StatusCode); // as for any NAR no public cache has
            Assert.Null(anonymous.Headers.Location);
        }
    }

    [Fact]
    public void A_server_on_a_blob_directory_refuses_to_redirect()
    {
        using var temp = new TempDir();
        var result = Processes.Run("dotnet", [KilnProcess.Dll, "serve", "--data", temp["data"], "--ssh-listen", "none", "--http-listen", "none", "--nar-redirect"]);
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains("--nar-redirect", result.Stderr, StringComparison.Ordinal);
        Assert.Contains("--blobs", result.Stderr, StringComparison.Ordinal);
    }
}
