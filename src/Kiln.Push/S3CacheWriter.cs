using System.Net;
using Amazon.S3;
using Amazon.S3.Model;

namespace Kiln.Push;

/// <summary>An <c>s3://</c> binary cache: objects under the location's prefix, written with the account's own credentials.</summary>
internal sealed class S3CacheWriter(IAmazonS3 client, string bucket, string prefix) : ICacheWriter
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
        try
        {
            // One PUT (S3 takes up to 5 GiB so); the body streams from the file or blob it is read from.
            await client.PutObjectAsync(new PutObjectRequest
            {
                BucketName = bucket,
                Key = prefix + file,
                InputStream = new LengthStream(content, length),
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
    }

    public void Dispose() => client.Dispose();
}

/// <summary>A stream that says its length (the SDK asks for one to set Content-Length), reading the inner stream.</summary>
internal sealed class LengthStream(Stream inner, long length) : Kiln.Nix.ReadOnlyStream
{
    private long _position;

    public override long Length => length;

    public override long Position { get => _position; set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Counted(inner.Read(buffer, offset, count));

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        Counted(await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false));

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    private int Counted(int n)
    {
        _position += n;
        return n;
    }
}
