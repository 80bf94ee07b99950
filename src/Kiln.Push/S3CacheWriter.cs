using System.Net;
using Amazon.S3;
using Amazon.S3.Model;

namespace Kiln.Push;

/// <summary>An <c>s3://</c> binary cache: objects under the location's prefix, written with the account's own credentials.</summary>
internal sealed class S3CacheWriter(IAmazonS3 client, string bucket, string prefix, string temporaryDirectory) : ICacheWriter
{
    public async Task<bool> ExistsAsync(string file, CancellationToken cancellationToken)
    {
        try
        {
            await client.GetObjectMetadataAsync(bucket, prefix + file, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (AmazonS3Exception e) when (e.StatusCode is HttpStatusCode.NotFound)
        {
            return false;
        }
        catch (AmazonS3Exception e)
        {
            throw new PushException($"the bucket '{bucket}' answered {(int)e.StatusCode} ({e.ErrorCode})", inner: e);
        }
        catch (HttpRequestException e)
        {
            throw new PushException($"cannot reach the bucket '{bucket}': {e.Message}", inner: e);
        }
    }

    public async Task PutAsync(string file, Stream content, long length, string contentType, CancellationToken cancellationToken)
    {
        // One PUT (S3 takes up to 5 GiB so), unchunked and signed with the body's SHA-256 (what every S3-compatible
        // server understands; s3rver keeps aws-chunked bodies verbatim): the SDK reads the body twice, so a body that
        // cannot seek (an uncompressed NAR from a bucket) is spooled to a temporary file first.
        FileStream? spool = null;
        try
        {
            if (!content.CanSeek)
            {
                Directory.CreateDirectory(temporaryDirectory);
                spool = new FileStream(Path.Combine(temporaryDirectory, $"push-{Guid.NewGuid():N}.spool"), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, 1 << 16,
                    FileOptions.DeleteOnClose | FileOptions.Asynchronous);
                await content.CopyToAsync(spool, cancellationToken).ConfigureAwait(false);
                spool.Position = 0;
            }

            var body = spool ?? content;
            if (body.Length - body.Position != length)
            {
                throw new PushException($"'{file}' came out as {body.Length - body.Position} bytes, not {length}");
            }

            await client.PutObjectAsync(new PutObjectRequest
            {
                BucketName = bucket,
                Key = prefix + file,
                InputStream = body,
                AutoCloseStream = false,
                ContentType = contentType,
                UseChunkEncoding = false,
            }, cancellationToken).ConfigureAwait(false);
        }
        catch (AmazonS3Exception e)
        {
            throw new PushException($"the bucket '{bucket}' refused '{file}': {(int)e.StatusCode} ({e.ErrorCode})", inner: e);
        }
        catch (HttpRequestException e)
        {
            throw new PushException($"cannot reach the bucket '{bucket}': {e.Message}", inner: e);
        }
        finally
        {
            if (spool is not null)
            {
                await spool.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    public void Dispose() => client.Dispose();
}
