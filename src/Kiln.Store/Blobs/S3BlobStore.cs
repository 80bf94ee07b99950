using System.Net;
using System.Runtime.CompilerServices;
using Amazon.Runtime;
using Amazon.S3;
using Amazon.S3.Model;
using Kiln.Nix.Hashing;

namespace Kiln.Store.Blobs;

/// <summary>
/// <see cref="IBlobStore"/> in an S3-compatible bucket (AWS S3, R2, MinIO, Garage, Ceph RGW): each blob is the object
/// <c>PREFIX/blobs/&lt;nix32 sha256&gt;.nar</c>. A writer spools to local disk while it hashes (never a whole NAR in
/// memory), and commit uploads the spool — multipart beyond 16 MiB, parts read from the file — then makes sure of the
/// object (by the PUT's ETag, or its size), so an object under a blob's name is complete before any metadata names it;
/// an upload cut short leaves at most an incomplete multipart upload, which <see cref="CleanAbandonedAsync"/> aborts. Recently used blobs stay on local
/// disk (<see cref="LocalBlobCache"/>), so the HTTP cache's sendfile path and the agents' input reads stay local;
/// a blob fetched from the bucket is hashed on the way in and refused if the bucket's copy is not what its name says.
/// </summary>
public sealed class S3BlobStore : IBlobStore, ISharedFiles, IDisposable
{
    private const long PartSize = 16L << 20;

    private readonly IAmazonS3 _client;
    private readonly S3BlobLocation _location;
    private readonly LocalBlobCache _cache;
    private readonly LiveFiles _live = new();
    private readonly Lazy<S3SignedPut?> _signedPut;
    private int _signedPutRefusals; // in a row: three, and every blob's PUT goes through the SDK
    private readonly Lazy<Task<bool>> _checksBodies;

    public S3BlobStore(S3BlobLocation location, LocalBlobCache cache)
    {
        ArgumentNullException.ThrowIfNull(location);
        _location = location;
        _cache = cache;
        _client = location.CreateClient();
        _signedPut = new(CreateSignedPut);
        _checksBodies = new(() => Task.Run(ProbeChecksBodiesAsync));
    }

    /// <summary>
    /// Whether the server checks a PUT's body against the SHA-256 it was signed with, as AWS S3, Ceph RGW and MinIO do
    /// (s3rver, a test server, does not). Where it does, a blob's PUT signed with its name (<see cref="S3SignedPut"/>)
    /// that succeeds stored exactly what was received, so its writer needs no MD5 to compare with the ETag: a third of
    /// the hashing a push costs. Asked once, in the background, when the first blob is written; writers started before
    /// the answer compute the MD5.
    /// </summary>
    internal Task<bool> ChecksBodiesAsync() => _checksBodies.Value;

    private bool BodiesChecked => _checksBodies.Value is { IsCompletedSuccessfully: true, Result: true };

    // A PUT of a few bytes signed with another body's hash: a server that checks refuses it as such. Anything else (it
    // is stored, and then deleted; refused for another reason; the bucket unreachable) leaves writers checking the ETag.
    private async Task<bool> ProbeChecksBodiesAsync()
    {
        if (_signedPut.Value is not { } signed)
        {
            return false;
        }

        var key = _location.Prefix + "probe/" + Guid.NewGuid().ToString("N");
        try
        {
            var body = "kiln: does this server check a body against the SHA-256 it is signed with?"u8.ToArray();
            var another = NixHash.Compute(NixHashAlgorithm.Sha256, "another body"u8);
            using var patience = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await signed.PutAsync(key, body, another, "application/octet-stream", patience.Token).ConfigureAwait(false);
            await _client.DeleteObjectAsync(_location.Bucket, key, patience.Token).ConfigureAwait(false);
            return false;
        }
        catch (S3SignedPut.BodyRefused)
        {
            return true;
        }
#pragma warning disable CA1031 // not knowing is the safe answer; a probe stored and not deleted is a few bytes outside blobs/
        catch (Exception)
#pragma warning restore CA1031
        {
            return false;
        }
    }

    // Blobs' PUTs signed here with the hash their writer computed (S3SignedPut), at the URL the SDK would use: its
    // presigned URL for a key, less the key. Null (the SDK does every PUT) when that cannot be made, e.g. credentials
    // that do not resolve, which the SDK's own request then reports.
    private S3SignedPut? CreateSignedPut()
    {
        try
        {
            var key = _location.Prefix + "blobs/url";
            var url = _client.GetPreSignedURL(new GetPreSignedUrlRequest
            {
                BucketName = _location.Bucket,
                Key = key,
                Verb = HttpVerb.PUT,
                Expires = DateTime.UtcNow.AddHours(1),
                Protocol = Scheme,
            });
            return new S3SignedPut(new Uri(url), key, _location.Region, _location.ResolveCredentials());
        }
#pragma warning disable CA1031 // any failure leaves the SDK to do (and report) the work
        catch (Exception)
#pragma warning restore CA1031
        {
            return null;
        }
    }

    // How the bucket is reached, for URLs signed here: as the endpoint says, else HTTPS.
    private Amazon.S3.Protocol Scheme => _location.Endpoint?.Scheme == "http" ? Amazon.S3.Protocol.HTTP : Amazon.S3.Protocol.HTTPS;

    private string KeyOf(NixHash hash) => _location.Prefix + "blobs/" + hash.ToNix32() + ".nar";

    // The bucket unreachable or failing is a storage failure (EIO), as the disk's are: every front door reports it
    // as "Kiln's storage…" and goes on.
    private static async Task<T> Storage<T>(string what, Func<Task<T>> work)
    {
        try
        {
            return await work().ConfigureAwait(false);
        }
        catch (Exception e) when (e is AmazonServiceException or AmazonClientException or HttpRequestException or System.Net.Sockets.SocketException
            && e is not OperationCanceledException)
        {
            throw new IOException($"the blob store could not {what}: {e.Message}", e) { HResult = 5 };
        }
    }

    private static bool IsNotFound(AmazonS3Exception e) => e.StatusCode == HttpStatusCode.NotFound;

    // The object, or null when the bucket has none under that key. Dispose the response.
    private async Task<GetObjectResponse?> GetObjectAsync(string key, CancellationToken cancellationToken)
    {
        try
        {
            return await _client.GetObjectAsync(_location.Bucket, key, cancellationToken).ConfigureAwait(false);
        }
        catch (AmazonS3Exception e) when (IsNotFound(e))
        {
            return null;
        }
    }

    private async Task<long?> LengthAsync(NixHash hash, CancellationToken cancellationToken)
    {
        try
        {
            var head = await _client.GetObjectMetadataAsync(_location.Bucket, KeyOf(hash), cancellationToken).ConfigureAwait(false);
            return head.ContentLength;
        }
        catch (AmazonS3Exception e) when (IsNotFound(e))
        {
            return null;
        }
    }

    // Asked of the bucket, not the cache: another front door's collector may have deleted the object, and what is
    // registered on a "yes" must really be stored.
    public async ValueTask<bool> HasAsync(NixHash hash, CancellationToken cancellationToken)
    {
        if (await Storage("be read", () => LengthAsync(hash, cancellationToken)).ConfigureAwait(false) is not null)
        {
            return true;
        }

        _cache.Forget(hash);
        return false;
    }

    public async ValueTask<NixHash?> HashStoredAsync(NixHash hash, CancellationToken cancellationToken) => await Storage("be read", async () =>
    {
        // The bucket's copy, streamed and hashed; the local cache is neither read nor filled.
        if (await GetObjectAsync(KeyOf(hash), cancellationToken).ConfigureAwait(false) is not { } response)
        {
            return (NixHash?)null;
        }

        using (response)
        {
            try
            {
                return (NixHash?)await BlobSource.FromStream(hash, response.ContentLength, _ => ValueTask.FromResult(response.ResponseStream))
                    .HashAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (AmazonClientException e)
            {
                // The SDK's check of the body against the MD5 the server keeps for it (where it keeps one) failed at
                // its end: the bucket's copy changed after it was stored. (A connection lost mid-body is an IOException.)
                throw new BlobDamagedException($"the bucket's copy fails the checksum the bucket keeps for it ({e.Message})", e);
            }
        }
    }).ConfigureAwait(false);

    public async ValueTask<BlobSource?> OpenReadAsync(NixHash hash, CancellationToken cancellationToken)
    {
        if (_cache.TryOpen(hash) is { } cached)
        {
            return BlobSource.FromFile(hash, cached);
        }

        return await Storage("be read", async () =>
        {
            if (await GetObjectAsync(KeyOf(hash), cancellationToken).ConfigureAwait(false) is not { } response)
            {
                return null;
            }

            using (response)
            {
                // Through the local cache: fetched once, hashed on the way, then read (and sent) as a local file.
                var spool = _cache.NewSpoolPath();
                try
                {
                    await using (var file = SpoolFile(spool))
                    using (var hashing = new HashingSink(NixHashAlgorithm.Sha256))
                    {
                        var buffer = new byte[1 << 20];
                        int read;
                        while ((read = await response.ResponseStream.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
                        {
                            hashing.Append(buffer.AsSpan(0, read));
                            file.Write(buffer, 0, read);
                        }

                        if (hashing.Finish() != hash)
                        {
                            throw new IOException($"the blob store's copy of {hash.ToNix32()} is not what its name says (changed or damaged in the bucket)")
                            {
                                HResult = 5,
                            };
                        }
                    }

                    // Opened before the cache takes it: the open file survives the rename and any eviction after it. Not
                    // kept (no cache, or larger than it), the spool goes when the reader is done.
                    var kept = _cache.Limit > 0 && new FileInfo(spool).Length <= _cache.Limit;
                    var open = new FileStream(spool, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, bufferSize: 0,
                        FileOptions.Asynchronous | FileOptions.SequentialScan | (kept ? FileOptions.None : FileOptions.DeleteOnClose));
                    if (kept)
                    {
                        _cache.Adopt(hash, spool);
                    }

                    return BlobSource.FromFile(hash, open);
                }
                catch
                {
                    File.Delete(spool);
                    throw;
                }
            }
        }).ConfigureAwait(false);
    }

    private static FileStream SpoolFile(string path) => new(path, new FileStreamOptions
    {
        Mode = FileMode.CreateNew,
        Access = FileAccess.Write,
        Share = FileShare.None,
        BufferSize = 0,
        UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
    });

    public IBlobWriter CreateWriter() => new Writer(this, BodiesChecked);

    // Never commit a blob whose object is not whole. The PUT's answer usually proves it: a single-part object's ETag is
    // the MD5 of what the server stored, which the writer computed too (belt and braces beside the signed SHA-256 of
    // the body, and the only check with a server that verifies no signature). Otherwise (a multipart upload, an ETag
    // that is not the MD5, as with SSE-KMS, or no MD5 where FIPS forbids it) the object's size is asked for: a server
    // that kept a transfer encoding shows another size. (s3rver, a test server, writes an object in place: another
    // front door's upload of the same content may truncate it for a moment after this PUT, and a reader then meets a
    // short object, which its hash check refuses; S3 and the servers above replace objects atomically.) The key is the
    // content's hash, so any upload that completes is right: wait a little for it, and never delete what may be another
    // front door's good copy.
    private async Task ExpectLengthAsync(NixHash hash, long length, CancellationToken cancellationToken)
    {
        long? kept = null;
        for (var attempt = 0; attempt < 20; attempt++)
        {
            kept = await LengthAsync(hash, cancellationToken).ConfigureAwait(false);
            if (kept == length)
            {
                return;
            }

            await Task.Delay(100, cancellationToken).ConfigureAwait(false);
        }

        throw new IOException($"the blob store kept {hash.ToNix32()} as {kept?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "nothing"}, not the {length} bytes sent")
        {
            HResult = 5,
        };
    }

    public async ValueTask<bool> DeleteAsync(NixHash hash, CancellationToken cancellationToken)
    {
        _cache.Forget(hash);
        return await Storage("delete a blob", async () =>
        {
            if (await LengthAsync(hash, cancellationToken).ConfigureAwait(false) is null)
            {
                return false;
            }

            await _client.DeleteObjectAsync(_location.Bucket, KeyOf(hash), cancellationToken).ConfigureAwait(false);
            _cache.Forget(hash); // again: a reader may have fetched it into the cache meanwhile
            return true;
        }).ConfigureAwait(false);
    }

    public async IAsyncEnumerable<StoredBlob> ListAsync([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var prefix = _location.Prefix + "blobs/";
        string? continuation = null;
        do
        {
            var page = await Storage("be listed", () => _client.ListObjectsV2Async(new ListObjectsV2Request
            {
                BucketName = _location.Bucket,
                Prefix = prefix,
                ContinuationToken = continuation,
            }, cancellationToken)).ConfigureAwait(false);
            foreach (var item in page.S3Objects ?? [])
            {
                var name = item.Key[prefix.Length..];
                if (name.EndsWith(".nar", StringComparison.Ordinal) && !name.Contains('/', StringComparison.Ordinal)
                    && LocalBlobCache.BlobName(name[..^4]) is { } hash)
                {
                    yield return new StoredBlob(hash, item.Size ?? 0, item.LastModified ?? DateTime.UtcNow);
                }
            }

            continuation = page.IsTruncated == true ? page.NextContinuationToken : null;
        }
        while (continuation is not null);
    }

    public Uri? LinkFor(NixHash hash, TimeSpan lifetime)
    {
        // Signed here, with this server's credentials, for a GET of this one object until it expires: no request to
        // the bucket, and nothing a client can widen (another key, another verb, longer) without breaking the signature.
        try
        {
            var url = _client.GetPreSignedURL(new GetPreSignedUrlRequest
            {
                BucketName = _location.Bucket,
                Key = KeyOf(hash),
                Verb = HttpVerb.GET,
                Expires = DateTime.UtcNow + lifetime,
                Protocol = Scheme,
            });
            return new Uri(url);
        }
        catch (AmazonClientException e)
        {
            // Credentials that cannot be resolved: the storage's failure (503), as any other request to the bucket.
            throw new IOException($"the blob store could not sign a link: {e.Message}", e) { HResult = 5 };
        }
    }

    public async ValueTask<int> CleanAbandonedAsync(TimeSpan age, CancellationToken cancellationToken)
    {
        var removed = 0;
        foreach (var file in Directory.EnumerateFiles(_cache.SpoolDirectory))
        {
            if (!_live.Contains(file) && DateTime.UtcNow - File.GetLastWriteTimeUtc(file) >= age)
            {
                File.Delete(file);
                removed++;
            }
        }

        // Multipart uploads a server began and never finished (it was killed mid-NAR): their parts cost storage
        // until aborted, and nothing else would ever remove them.
        return removed + await Storage("be cleaned", async () =>
        {
            ListMultipartUploadsResponse uploads;
            try
            {
                uploads = await _client.ListMultipartUploadsAsync(new ListMultipartUploadsRequest { BucketName = _location.Bucket, Prefix = _location.Prefix + "blobs/" },
                    cancellationToken).ConfigureAwait(false);
            }
            catch (AmazonS3Exception e) when (e.StatusCode == HttpStatusCode.NotImplemented)
            {
                return 0; // a server without the listing (s3rver): its own housekeeping has to do
            }

            var aborted = 0;
            foreach (var upload in uploads.MultipartUploads ?? [])
            {
                if (DateTime.UtcNow - (upload.Initiated ?? DateTime.UtcNow).ToUniversalTime() >= age)
                {
                    await _client.AbortMultipartUploadAsync(_location.Bucket, upload.Key, upload.UploadId, cancellationToken).ConfigureAwait(false);
                    aborted++;
                }
            }

            return aborted;
        }).ConfigureAwait(false);
    }

    // One PUT up to a part's size; beyond it a multipart upload, parts read from the spool file (never the whole blob in
    // memory), up to 4 at once. Unchunked: every S3-compatible server understands it (s3rver keeps aws-chunked bodies
    // verbatim), and the SDK then signs each body's SHA-256, so the server checks what it got. Returns a single PUT's
    // ETag (null for a multipart upload, whose ETag is not its content's MD5).
    private async Task<Uploaded> UploadAsync(string file, long length, string key, string contentType, CancellationToken cancellationToken,
        NixHash? sha256 = null)
    {
        if (length <= PartSize && sha256 is { } hash && Volatile.Read(ref _signedPutRefusals) < 3 && _signedPut.Value is { } signed)
        {
            try
            {
                var etag = await signed.PutAsync(key, file, length, hash, contentType, cancellationToken).ConfigureAwait(false);
                Volatile.Write(ref _signedPutRefusals, 0);
                return new(etag, SignedWithHash: true);
            }
            catch (S3SignedPut.BodyRefused e)
            {
                throw new IOException(e.Message, e) { HResult = 5 }; // a storage failure, as every front door reports one
            }
            catch (S3SignedPut.Refused)
            {
                // This server wants what only the SDK does (or refuses everything, and the SDK says why); a refusal that
                // passes (a clock skew the SDK corrects, an expired token it renews) leaves the next PUT signed here.
                Interlocked.Increment(ref _signedPutRefusals);
            }
        }

        if (length <= PartSize)
        {
            if (sha256 is { } name)
            {
                // The SDK signs whatever the file holds: a spool damaged since it was hashed would be stored under a name
                // that is not its own on a server that checks no more than that signature (and where the ETag is no
                // proof, the writer asks only for its size). A multipart upload's parts are not checked again (too
                // costly for the large NARs that take that path): a damaged one is refused when the blob is read.
                await EnsureHoldsAsync(file, name, cancellationToken).ConfigureAwait(false);
            }

            var put = await _client.PutObjectAsync(new PutObjectRequest
            {
                BucketName = _location.Bucket,
                Key = key,
                FilePath = file,
                ContentType = contentType,
                UseChunkEncoding = false,
            }, cancellationToken).ConfigureAwait(false);
            return new(put.ETag, SignedWithHash: false);
        }

        var upload = await _client.InitiateMultipartUploadAsync(new InitiateMultipartUploadRequest
        {
            BucketName = _location.Bucket,
            Key = key,
            ContentType = contentType,
        }, cancellationToken).ConfigureAwait(false);
        try
        {
            var parts = (int)((length + PartSize - 1) / PartSize);
            var etags = new PartETag[parts];
            using var slots = new SemaphoreSlim(4);
            await Task.WhenAll(Enumerable.Range(0, parts).Select(async index =>
            {
                await slots.WaitAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    var response = await _client.UploadPartAsync(new UploadPartRequest
                    {
                        BucketName = _location.Bucket,
                        Key = key,
                        UploadId = upload.UploadId,
                        PartNumber = index + 1,
                        FilePath = file,
                        FilePosition = index * PartSize,
                        PartSize = Math.Min(PartSize, length - (index * PartSize)),
                        UseChunkEncoding = false,
                    }, cancellationToken).ConfigureAwait(false);
                    etags[index] = new PartETag(index + 1, response.ETag);
                }
                finally
                {
                    slots.Release();
                }
            })).ConfigureAwait(false);
            await _client.CompleteMultipartUploadAsync(new CompleteMultipartUploadRequest
            {
                BucketName = _location.Bucket,
                Key = key,
                UploadId = upload.UploadId,
                PartETags = [.. etags],
            }, cancellationToken).ConfigureAwait(false);
            return new(null, SignedWithHash: false);
        }
        catch
        {
            // Its parts would cost storage for ever; a server killed before this runs leaves them to CleanAbandonedAsync.
            await _client.AbortMultipartUploadAsync(_location.Bucket, key, upload.UploadId, CancellationToken.None).ConfigureAwait(false);
            throw;
        }
    }

    // Shared files beside the blobs: PREFIX/logs/…, PREFIX/nar-files/… (never under blobs/, which the sweep lists).
    private string SharedKeyOf(string name) => _location.Prefix + name;

    public Task PutFileAsync(string name, string file, CancellationToken cancellationToken) =>
        Storage("store a shared file", async () =>
        {
            await UploadAsync(file, new FileInfo(file).Length, SharedKeyOf(name), "application/octet-stream", cancellationToken).ConfigureAwait(false);
            return true;
        });

    public Task<bool> GetFileAsync(string name, string destination, CancellationToken cancellationToken) =>
        Storage("read a shared file", async () =>
        {
            if (await GetObjectAsync(SharedKeyOf(name), cancellationToken).ConfigureAwait(false) is not { } response)
            {
                return false;
            }

            using (response)
            {
                await using var file = SpoolFile(destination);
                await response.ResponseStream.CopyToAsync(file, 1 << 20, cancellationToken).ConfigureAwait(false);
            }

            return true;
        });

    public Task DeleteFileAsync(string name, CancellationToken cancellationToken) =>
        Storage("delete a shared file", async () =>
        {
            await _client.DeleteObjectAsync(_location.Bucket, SharedKeyOf(name), cancellationToken).ConfigureAwait(false);
            return true;
        });

    public void Dispose()
    {
        _client.Dispose();
        if (_signedPut.IsValueCreated)
        {
            _signedPut.Value?.Dispose();
        }
    }

    // A blob's spool must still hash to the blob's name before anything trusts what was sent from it (a storage failure if not).
    private static async Task EnsureHoldsAsync(string spool, NixHash hash, CancellationToken cancellationToken)
    {
        await using var stream = new FileStream(spool, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.Asynchronous | FileOptions.SequentialScan);
        await using var hashing = new HashingStream(NixHashAlgorithm.Sha256);
        await stream.CopyToAsync(hashing, 1 << 18, cancellationToken).ConfigureAwait(false);
        if (hashing.Finish() != hash)
        {
            throw new IOException("the blob's spool file is not what was received (damaged on local disk?)") { HResult = 5 };
        }
    }

    // An upload's answer: the ETag (a single PUT's), and whether the body was signed with the SHA-256 the caller gave.
    private readonly record struct Uploaded(string? ETag, bool SignedWithHash);

    // Whether a PUT's ETag ("…", quoted) is the MD5 (base 16) of the bytes sent.
    private static bool IsContent(string? etag, string md5) =>
        etag is not null && etag.Trim('"').Equals(md5, StringComparison.OrdinalIgnoreCase);

    /// <summary>A blob spooled to local disk while it is hashed, uploaded on commit, then kept in the local cache.</summary>
    private sealed class Writer(S3BlobStore store, bool bodyChecked) : IBlobWriter
    {
        private readonly string _path = store._live.Add(store._cache.NewSpoolPath());
        private readonly HashingSink _hash = new(NixHashAlgorithm.Sha256);
        // What the bucket's ETag for a single-part object will be, unless the server checks bodies; none beyond a part (a
        // multipart ETag is no MD5), or where the system's crypto refuses MD5 (FIPS): its size is asked for instead.
        private HashingSink? _md5 = bodyChecked ? null : new(NixHashAlgorithm.Md5);
        private string? _md5Hex;
        private FileStream? _file;
        private NixHash? _completed;
        private long _length;
        private bool _committed;
        private bool _shipped;

        public long Length => _completed is null ? _hash.BytesWritten : _length;

        public void Write(ReadOnlySpan<byte> data)
        {
            if (_completed is not null)
            {
                throw new InvalidOperationException("the blob is complete");
            }

            _file ??= SpoolFile(_path);
            _hash.Append(data);
            if (_hash.BytesWritten > PartSize)
            {
                DropMd5(); // a multipart upload's ETag is no MD5
            }
            else if (_md5 is not null)
            {
                try
                {
                    _md5.Append(data);
                }
                catch (System.Security.Cryptography.CryptographicException)
                {
                    DropMd5();
                }
            }

            _file.Write(data);
        }

        public ValueTask<NixHash> CompleteAsync(CancellationToken cancellationToken)
        {
            if (_completed is null)
            {
                (_file ??= SpoolFile(_path)).Dispose();
                _length = _hash.BytesWritten;
                _completed = _hash.Finish();
                _md5Hex = _md5?.Finish().ToBase16();
            }

            return ValueTask.FromResult(_completed.Value);
        }

        public async ValueTask<bool> ShipAsync(CancellationToken cancellationToken)
        {
            var hash = await CompleteAsync(cancellationToken).ConfigureAwait(false);
            if (!_committed && !_shipped)
            {
                await UploadAsync(hash, cancellationToken).ConfigureAwait(false);
                _shipped = true;
            }

            return _shipped;
        }

        public ValueTask CommitAsync(CancellationToken cancellationToken) => CommitAsync(shippedCopyKept: false, cancellationToken);

        public async ValueTask CommitAsync(bool shippedCopyKept, CancellationToken cancellationToken)
        {
            var hash = await CompleteAsync(cancellationToken).ConfigureAwait(false);
            if (_committed)
            {
                return;
            }

            // Shipped without the collection lock held all along: the sweep of unnamed blobs may have deleted it since
            // (it lists without the lock, so an older copy under the same key made it a candidate; an abandoned batch
            // deletes what it shipped, which may be this content). Now, with the lock held until the registration, what
            // is there stays there; what is not is sent again. A round trip per blob, saved when the caller knows.
            if (!_shipped || (!shippedCopyKept
                && await Storage("look for a blob", () => store.LengthAsync(hash, cancellationToken)).ConfigureAwait(false) != Length))
            {
                await UploadAsync(hash, cancellationToken).ConfigureAwait(false);
            }

            store._cache.Adopt(hash, _path);
            _committed = true;
        }

        private async Task UploadAsync(NixHash hash, CancellationToken cancellationToken)
        {
            var length = Length;
            await Storage("store a blob", async () =>
            {
                // Sent even when the content is stored already: the upload renews the object's age, which the sweep of
                // unnamed blobs goes by (another front door's collector must not take it before this registration), and
                // an upload that takes as long whether or not someone stored the content tells the uploader nothing.
                var uploaded = await store.UploadAsync(_path, length, store.KeyOf(hash), "application/x-nix-nar", cancellationToken, hash).ConfigureAwait(false);
                // Proof enough: a server that checks bodies took one signed with the blob's name; else the ETag, or the size.
                if (!(bodyChecked && uploaded.SignedWithHash) && (_md5Hex is null || !IsContent(uploaded.ETag, _md5Hex)))
                {
                    // An ETag that is not the MD5 received (SSE-KMS, or what was sent is not what was received): the
                    // spool, what was sent, is looked at again, so the size asked for next is no check of a damaged one.
                    if (_md5Hex is not null && length <= PartSize)
                    {
                        await EnsureHoldsAsync(_path, hash, cancellationToken).ConfigureAwait(false);
                    }

                    await store.ExpectLengthAsync(hash, length, cancellationToken).ConfigureAwait(false);
                }

                return true;
            }).ConfigureAwait(false);
        }

        private void DropMd5()
        {
            _md5?.Dispose();
            _md5 = null;
        }

        public ValueTask DisposeAsync()
        {
            _file?.Dispose();
            _hash.Dispose();
            DropMd5();
            if (!_committed)
            {
                File.Delete(_path);
            }

            store._live.Remove(_path);
            return ValueTask.CompletedTask;
        }
    }
}
