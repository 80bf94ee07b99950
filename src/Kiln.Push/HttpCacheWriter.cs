using System.Net;
using System.Net.Http.Headers;
using System.Text;

namespace Kiln.Push;

/// <summary>
/// An <c>http(s)://</c> binary cache that takes PUT (nginx's WebDAV module, a cache service): HEAD asks whether a file
/// is there (404 and 403 say no, as Nix reads them), PUT writes it, with the account's netrc credentials for the host.
/// </summary>
internal sealed class HttpCacheWriter(HttpClient client, Uri root, NetworkCredential? credentials) : ICacheWriter
{
    private readonly AuthenticationHeaderValue? _authorization = credentials is null ? null
        : new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{credentials.UserName}:{credentials.Password}")));

    public async Task<bool> ExistsAsync(string file, CancellationToken cancellationToken)
    {
        using var request = Request(HttpMethod.Head, file);
        using var response = await SendAsync(request, cancellationToken).ConfigureAwait(false);
        return response.StatusCode switch
        {
            HttpStatusCode.OK => true,
            HttpStatusCode.NotFound or HttpStatusCode.Forbidden => false,
            _ => throw Refused("HEAD", file, response),
        };
    }

    public async Task PutAsync(string file, Stream content, long length, string contentType, CancellationToken cancellationToken)
    {
        using var request = Request(HttpMethod.Put, file);
        request.Content = new StreamContent(content, 1 << 16);
        request.Content.Headers.ContentLength = length;
        request.Content.Headers.ContentType = new MediaTypeHeaderValue(contentType);
        using var response = await SendAsync(request, cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            throw Refused("PUT", file, response);
        }
    }

    private HttpRequestMessage Request(HttpMethod method, string file)
    {
        var request = new HttpRequestMessage(method, new Uri(root, file));
        request.Headers.Authorization = _authorization;
        return request;
    }

    private async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        try
        {
            return await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            throw new PushException($"cannot reach {root.GetLeftPart(UriPartial.Authority)}: {e.Message}", inner: e);
        }
        catch (TaskCanceledException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new PushException($"{root.GetLeftPart(UriPartial.Authority)} did not answer in time", inner: e);
        }
    }

    private static PushException Refused(string method, string file, HttpResponseMessage response) =>
        new($"{method} {file} answered {(int)response.StatusCode} {response.ReasonPhrase}");

    public void Dispose()
    {
        // (The HttpClient is the pusher's, shared by its targets.)
    }
}
