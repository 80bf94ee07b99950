using Kiln.Nix.Hashing;

namespace Kiln.Store.Blobs;

/// <summary>
/// The blob port: content stored once under its SHA-256 — NARs under their NAR hash, compressed NAR files kept for
/// HTTP clients under their file hash. A blob is written through an <see cref="IBlobWriter"/>, which hashes what
/// passes and makes it readable only when committed, under the hash it computed; so a blob under a name is always
/// complete and is what that name says. Nothing outside an implementation knows where blobs live: a reader gets a
/// <see cref="BlobSource"/>. The directory store (<see cref="DiskBlobStore"/>) is the embedded default; an object
/// store implements the same contract (<c>tests/Kiln.Store.Tests/BlobStoreContract.cs</c>).
/// </summary>
public interface IBlobStore
{
    ValueTask<bool> HasAsync(NixHash hash, CancellationToken cancellationToken);

    /// <summary>The blob's bytes, or null when no blob has this hash. Dispose the source when done.</summary>
    ValueTask<BlobSource?> OpenReadAsync(NixHash hash, CancellationToken cancellationToken);

    /// <summary>
    /// What verification checks: the SHA-256 of the bytes the store keeps under <paramref name="hash"/>, read from
    /// where it keeps them — an object store's bucket, never a local cache of it (a cached copy can be whole while
    /// the bucket's, which every other front door reads, is not) — or null when it keeps none. A copy that fails a
    /// checksum the store itself keeps for it (an object store's MD5 of a single-part object) is a
    /// <see cref="BlobDamagedException"/>; any other damage shows as a hash that is not the name. Other failures to
    /// read (the bucket unreachable, a disk's EIO) are storage failures and end verification, as they end any reader.
    /// </summary>
    ValueTask<NixHash?> HashStoredAsync(NixHash hash, CancellationToken cancellationToken);

    /// <summary>Starts a new blob; nothing is kept unless it is committed.</summary>
    IBlobWriter CreateWriter();

    /// <summary>Deletes a blob (the garbage collector does, once nothing names it); false if there was none.</summary>
    ValueTask<bool> DeleteAsync(NixHash hash, CancellationToken cancellationToken);

    /// <summary>Every stored blob, with its size and when it was written (the collector's sweep, verification).</summary>
    IAsyncEnumerable<StoredBlob> ListAsync(CancellationToken cancellationToken);

    /// <summary>Removes what writers left that are older than <paramref name="age"/> (a crash mid-upload); returns how many.</summary>
    ValueTask<int> CleanAbandonedAsync(TimeSpan age, CancellationToken cancellationToken);

    /// <summary>
    /// A URL at which anyone holding it may fetch the blob directly for <paramref name="lifetime"/> (an object store's
    /// presigned URL), so the HTTP cache can send a client there instead of sending the bytes itself; null when the
    /// store has no such URLs (the directory store). Made without asking the store whether the blob exists: callers
    /// give it only for blobs the metadata names.
    /// </summary>
    Uri? LinkFor(NixHash hash, TimeSpan lifetime);
}

/// <summary>
/// A stored blob's copy is damaged: it fails a checksum the store keeps for it (an object store's MD5 of a single-part
/// object), so it cannot be read whole. A storage failure (EIO) like the others, which verification reports as that
/// blob's problem rather than stopping at it.
/// </summary>
public sealed class BlobDamagedException : IOException
{
    public BlobDamagedException(string message, Exception? inner = null)
        : base(message, inner) => HResult = 5;
}

/// <summary>A blob as listed: its hash, size and when it was written.</summary>
public sealed record StoredBlob(NixHash Hash, long Length, DateTimeOffset Written);

/// <summary>
/// A blob being written. Bytes are SHA-256-hashed and counted as they pass; <see cref="CompleteAsync"/> ends the
/// writing and says what the hash is; <see cref="CommitAsync(CancellationToken)"/> then makes the blob readable under that hash (or
/// drops it, when that content is stored already). Disposing an uncommitted writer leaves nothing behind.
/// </summary>
public interface IBlobWriter : IAsyncDisposable
{
    /// <summary>Bytes written so far.</summary>
    long Length { get; }

    /// <summary>Appends bytes (callers write large chunks: the directory store writes through, unbuffered).</summary>
    void Write(ReadOnlySpan<byte> data);

    /// <summary>Ends the writing (durably, when the store is so configured) and returns the SHA-256 of what was written.</summary>
    ValueTask<NixHash> CompleteAsync(CancellationToken cancellationToken);

    /// <summary>Makes the completed blob readable under its hash.</summary>
    ValueTask CommitAsync(CancellationToken cancellationToken);

    /// <summary>
    /// <see cref="CommitAsync(CancellationToken)"/>, told whether what <see cref="ShipAsync"/> stored is known to be there still:
    /// true when the caller held the collection lock from before the ship began until now without a break, so no sweep
    /// can have deleted it, and it need not be looked for.
    /// </summary>
    ValueTask CommitAsync(bool shippedCopyKept, CancellationToken cancellationToken) => CommitAsync(cancellationToken);

    /// <summary>
    /// Moves the completed blob ahead of its commit where that is slow (an upload into a bucket), so a batch's uploads
    /// run while the rest of it is still being received. It is called without the collection lock, and what it stores
    /// is neither readable nor safe from the sweep of unnamed blobs: <see cref="CommitAsync(CancellationToken)"/>, under the lock, then
    /// checks it is still there (and stores it again if the sweep took it in between), unless the caller held the lock
    /// all along. A failure here is not the
    /// caller's: the commit does the whole work again and reports. Returns whether it stored anything (false where the
    /// commit does all the work, as in a directory), so an abandoned batch knows what it has to delete.
    /// </summary>
    ValueTask<bool> ShipAsync(CancellationToken cancellationToken) => ValueTask.FromResult(false);
}

/// <summary>
/// A stored blob, ready to be read: a local file a caller may send with sendfile (<see cref="LocalFile"/>), or a
/// stream. The source holds the blob open, so a collection after it was opened cannot cut it short.
/// </summary>
public sealed class BlobSource : IAsyncDisposable
{
    private readonly Func<CancellationToken, ValueTask<Stream>>? _open;
    private Stream? _content;

    private BlobSource(NixHash hash, long length, Stream? content, Func<CancellationToken, ValueTask<Stream>>? open)
    {
        Hash = hash;
        Length = length;
        _content = content;
        _open = open;
    }

    /// <summary>A blob held in an open local file.</summary>
    public static BlobSource FromFile(NixHash hash, FileStream file)
    {
        ArgumentNullException.ThrowIfNull(file);
        return new BlobSource(hash, file.Length, file, null);
    }

    /// <summary>A blob read through <paramref name="open"/>.</summary>
    public static BlobSource FromStream(NixHash hash, long length, Func<CancellationToken, ValueTask<Stream>> open) =>
        new(hash, length, null, open);

    public NixHash Hash { get; }

    public long Length { get; }

    /// <summary>The blob as an open local file (positioned at its start), when it is one.</summary>
    public FileStream? LocalFile => _content as FileStream;

    /// <summary>The blob's bytes from the start. A source is read once; the stream goes with the source.</summary>
    public async ValueTask<Stream> OpenStreamAsync(CancellationToken cancellationToken) =>
        _content ??= await _open!(cancellationToken).ConfigureAwait(false);

    /// <summary>Reads the whole source, disposes it, and returns the SHA-256 of its bytes.</summary>
    public async ValueTask<NixHash> HashAsync(CancellationToken cancellationToken)
    {
        await using (this.ConfigureAwait(false))
        {
            var stream = await OpenStreamAsync(cancellationToken).ConfigureAwait(false);
            var hashing = new HashingStream(NixHashAlgorithm.Sha256);
            await using (hashing.ConfigureAwait(false))
            {
                await stream.CopyToAsync(hashing, 256 * 1024, cancellationToken).ConfigureAwait(false);
                return hashing.Finish();
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_content is not null)
        {
            await _content.DisposeAsync().ConfigureAwait(false);
        }
    }
}
