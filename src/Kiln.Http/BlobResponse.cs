using System.Globalization;
using Kiln.Http.ZeroCopy;
using Kiln.Store.Blobs;
using Microsoft.AspNetCore.Http;
using Microsoft.Net.Http.Headers;

namespace Kiln.Http;

/// <summary>
/// A blob as an HTTP answer: the bytes — by sendfile when the blob is a local file — with what clients and proxies
/// expect of immutable, content-addressed files: a strong ETag (the hash), <c>Cache-Control: immutable</c>, conditional
/// requests (<c>If-None-Match</c> → 304) and one byte range (<c>Range</c>, <c>If-Range</c>; several ranges are answered
/// with the whole blob, as ASP.NET Core's file results do).
/// </summary>
internal static class BlobResponse
{
    private const string Immutable = "public, max-age=31536000, immutable";

    public static async Task WriteAsync(HttpContext context, BlobSource blob, string contentType)
    {
        var request = context.Request;
        var response = context.Response;
        var cancellationToken = context.RequestAborted;
        var etag = new EntityTagHeaderValue($"\"{blob.Hash.ToNix32()}\"");
        response.Headers.ETag = etag.ToString();
        response.Headers.CacheControl = Immutable;
        response.Headers.AcceptRanges = "bytes";
        response.ContentType = contentType;
        var requested = request.GetTypedHeaders();
        if (requested.IfNoneMatch is { Count: > 0 } noneMatch && noneMatch.Any(t => t.Equals(EntityTagHeaderValue.Any) || t.Compare(etag, useStrongComparison: false)))
        {
            response.StatusCode = StatusCodes.Status304NotModified;
            return;
        }

        var (offset, length) = (0L, blob.Length);
        if (requested.Range is { Unit.Value: "bytes", Ranges.Count: 1 } range && (requested.IfRange?.EntityTag is not { } ifRange || ifRange.Compare(etag, useStrongComparison: true)))
        {
            var only = range.Ranges.Single();
            long? from = only.From, to = only.To;
            if (from is null && to is not null)
            {
                from = Math.Max(0, blob.Length - to.Value); // the last N bytes
                to = blob.Length - 1;
            }

            if (from is null || from >= blob.Length)
            {
                response.StatusCode = StatusCodes.Status416RangeNotSatisfiable;
                response.Headers.ContentRange = $"bytes */{blob.Length.ToString(CultureInfo.InvariantCulture)}";
                response.ContentLength = 0;
                return;
            }

            var last = Math.Min(to ?? blob.Length - 1, blob.Length - 1);
            (offset, length) = (from.Value, last - from.Value + 1);
            response.StatusCode = StatusCodes.Status206PartialContent;
            response.Headers.ContentRange = new ContentRangeHeaderValue(offset, last, blob.Length).ToString();
        }
        else
        {
            response.StatusCode = StatusCodes.Status200OK;
        }

        response.ContentLength = length;
        if (HttpMethods.IsHead(request.Method) || length == 0)
        {
            return;
        }

        if (blob.LocalFile is { } file)
        {
            await ZeroCopyFiles.SendFileAsync(context, file, offset, length, cancellationToken).ConfigureAwait(false);
            return;
        }

        var stream = await blob.OpenStreamAsync(cancellationToken).ConfigureAwait(false);
        if (offset > 0)
        {
            if (stream.CanSeek)
            {
                stream.Seek(offset, SeekOrigin.Begin);
            }
            else
            {
                var skip = new byte[64 * 1024];
                for (var left = offset; left > 0;)
                {
                    var read = await stream.ReadAsync(skip.AsMemory(0, (int)Math.Min(skip.Length, left)), cancellationToken).ConfigureAwait(false);
                    left -= read > 0 ? read : throw new IOException("the blob is shorter than its recorded size");
                }
            }
        }

        var buffer = new byte[Math.Min(length, 256 * 1024)];
        for (var left = length; left > 0;)
        {
            var read = await stream.ReadAsync(buffer.AsMemory(0, (int)Math.Min(buffer.Length, left)), cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                throw new IOException("the blob is shorter than its recorded size");
            }

            await response.Body.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
            left -= read;
        }
    }
}
