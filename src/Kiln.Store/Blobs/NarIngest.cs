using System.Buffers;
using System.Buffers.Binary;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;

namespace Kiln.Store.Blobs;

/// <summary>
/// A NAR written to a blob that is not committed yet, with what was learnt while it streamed past. Commit the blob
/// once the upload is verified and registered; dispose it in any case (an uncommitted blob leaves nothing).
/// </summary>
public sealed class IngestedNar(IBlobWriter blob, NixHash narHash, long narSize, NixHash? contentHash, byte[]? fileContents, string? treePath)
    : IAsyncDisposable
{
    public IBlobWriter Blob => blob;

    public NixHash NarHash => narHash;

    public long NarSize => narSize;

    /// <summary>The content hash a content address is checked against (null when none was asked for).</summary>
    public NixHash? ContentHash { get; init; } = contentHash;

    /// <summary>The single regular file's contents, when it was small enough to keep (a .drv).</summary>
    public byte[]? FileContents { get; init; } = fileContents;

    /// <summary>The NAR unpacked as it streamed, when asked for: a temporary tree to rename into place.</summary>
    public string? TreePath => treePath;

    /// <summary>Makes the blob readable under its NAR hash.</summary>
    public ValueTask CommitAsync(CancellationToken cancellationToken) => blob.CommitAsync(cancellationToken);

    /// <summary>Makes the blob readable, knowing whether what was shipped is there still (see <see cref="IBlobWriter.CommitAsync(bool, CancellationToken)"/>).</summary>
    public ValueTask CommitAsync(bool shippedCopyKept, CancellationToken cancellationToken) => blob.CommitAsync(shippedCopyKept, cancellationToken);

    /// <summary>Moves the blob ahead of its commit, without the collection lock (see <see cref="IBlobWriter.ShipAsync"/>).</summary>
    public ValueTask<bool> ShipAsync(CancellationToken cancellationToken) => blob.ShipAsync(cancellationToken);

    /// <summary>Drops what was not used: the blob if it was not committed, the unpacked tree if it was not adopted.</summary>
    public async ValueTask DisposeAsync()
    {
        await blob.DisposeAsync().ConfigureAwait(false);
        if (treePath is not null && Path.Exists(treePath))
        {
            NarExtractor.DeleteTree(treePath);
        }
    }
}

/// <summary>
/// Streams an upload into a new blob in one pass: SHA-256 and size of the NAR (the blob writer's), NAR validation (a
/// malformed or hostile archive is refused before anything is registered), the content hash a content address needs
/// (the NAR under another algorithm, or the single file's contents for flat and text addresses), and the contents of
/// a small single-file NAR when the caller wants them (a .drv, to learn its outputs). Memory stays constant whatever
/// the NAR's size. On any failure nothing is left behind.
/// </summary>
public static class NarIngest
{
    private const int BufferSize = 256 * 1024;

    /// <summary>Flat contents up to this size are held in memory while they are stored, not spooled to a file.</summary>
    public const int FlatInMemory = 64 * 1024;

    /// <summary>Copies the NAR from <paramref name="source"/> into a new, uncommitted blob.</summary>
    /// <param name="blobs">Where the blob goes.</param>
    /// <param name="source">The NAR.</param>
    /// <param name="contentMethod">With a content address to check: how its hash is computed.</param>
    /// <param name="captureFileUpTo">Keep the single regular file's contents if it is at most this many bytes.</param>
    /// <param name="maxSize">Refuse a NAR larger than this.</param>
    /// <param name="unpackTo">Also unpack the NAR, canonically, at this (new) path as it streams.</param>
    /// <param name="cancellationToken">Stops the copy.</param>
    public static async Task<IngestedNar> IngestAsync(IBlobStore blobs, Stream source, ContentAddressMethodAndAlgorithm? contentMethod,
        int captureFileUpTo, long maxSize, CancellationToken cancellationToken, string? unpackTo = null)
    {
        ArgumentNullException.ThrowIfNull(blobs);
        ArgumentNullException.ThrowIfNull(source);
        var blob = blobs.CreateWriter();
        var succeeded = false;
        using var extractor = unpackTo is null ? null : new NarExtractor(unpackTo, canonical: true);
        try
        {
            using var visitor = new IngestVisitor(contentMethod, captureFileUpTo);
            var parser = new NarParser(extractor is null ? visitor : new BothVisitors(visitor, extractor));
            var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
            try
            {
                int read;
                while ((read = await FillAsync(source, buffer, cancellationToken).ConfigureAwait(false)) > 0)
                {
                    var chunk = buffer.AsSpan(0, read);
                    if (parser.Feed(chunk) < read)
                    {
                        throw new KilnException(ErrorKind.Invalid, "bad archive: trailing data after the end of the NAR");
                    }

                    visitor.AppendNar(chunk);
                    if (blob.Length + read > maxSize)
                    {
                        throw new KilnException(ErrorKind.TooLarge, $"NAR is larger than the limit of {maxSize} bytes");
                    }

                    blob.Write(chunk);
                }

                parser.Finish();
            }
            catch (NarException e)
            {
                throw new KilnException(ErrorKind.Invalid, e.Message);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }

            var size = blob.Length;
            var narHash = await blob.CompleteAsync(cancellationToken).ConfigureAwait(false);
            var result = new IngestedNar(blob, narHash, size, visitor.ContentHash(), visitor.CapturedContents, unpackTo);
            succeeded = true;
            return result;
        }
        finally
        {
            if (!succeeded)
            {
                await blob.DisposeAsync().ConfigureAwait(false);
                if (unpackTo is not null)
                {
                    extractor!.Dispose();
                    NarExtractor.DeleteTree(unpackTo);
                }
            }
        }
    }

    // Reads until the buffer is full or the source ends: network payloads arrive in small pieces, and every piece
    // would otherwise cost a parse step, a hash call and a write.
    private static ValueTask<int> FillAsync(Stream source, byte[] buffer, CancellationToken cancellationToken) =>
        source.ReadAtLeastAsync(buffer.AsMemory(0, BufferSize), BufferSize, throwOnEndOfStream: false, cancellationToken);

    // Feeds one parse to two visitors: the checks, and the unpacking.
    private sealed class BothVisitors(INarVisitor first, INarVisitor second) : INarVisitor
    {
        public void RegularFile(bool executable, long size, long contentsOffset)
        {
            first.RegularFile(executable, size, contentsOffset);
            second.RegularFile(executable, size, contentsOffset);
        }

        public void Contents(ReadOnlySpan<byte> data)
        {
            first.Contents(data);
            second.Contents(data);
        }

        public void EndRegularFile()
        {
            first.EndRegularFile();
            second.EndRegularFile();
        }

        public void Symlink(ReadOnlySpan<byte> target)
        {
            first.Symlink(target);
            second.Symlink(target);
        }

        public void Directory()
        {
            first.Directory();
            second.Directory();
        }

        public void Entry(ReadOnlySpan<byte> name)
        {
            first.Entry(name);
            second.Entry(name);
        }

        public void EndEntry()
        {
            first.EndEntry();
            second.EndEntry();
        }

        public void EndDirectory()
        {
            first.EndDirectory();
            second.EndDirectory();
        }
    }

    /// <summary>
    /// Writes flat contents (text and flat uploads) as the NAR of one regular file: the contents are kept in memory (up
    /// to <see cref="FlatInMemory"/> bytes: a .drv, a script) or spooled to a file in <paramref name="spoolDirectory"/>
    /// first, to learn their size and hash, then go into a NAR blob. Returns the blob and the contents' hash.
    /// </summary>
    public static async Task<IngestedNar> IngestFlatAsync(IBlobStore blobs, string spoolDirectory, Stream contents, NixHashAlgorithm contentAlgorithm,
        int captureUpTo, long maxSize, CancellationToken cancellationToken, string? unpackTo = null)
    {
        ArgumentNullException.ThrowIfNull(blobs);
        ArgumentNullException.ThrowIfNull(contents);
        var flatPath = Path.Combine(spoolDirectory, $"flat-{Guid.NewGuid():N}");
        FileStream? flat = null;
        try
        {
            // The contents' first bytes, in memory: all of them while they fit in FlatInMemory (stored from there, with
            // no spool file: an evaluation uploads hundreds of small .drv files, and a file made and removed for each
            // was most of what one cost the server), and as many as the caller wants captured.
            var keep = Math.Max(captureUpTo, FlatInMemory);
            var head = new MemoryStream();
            using var contentHash = new HashingSink(contentAlgorithm);
            var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
            try
            {
                int read;
                while ((read = await FillAsync(contents, buffer, cancellationToken).ConfigureAwait(false)) > 0)
                {
                    var chunk = buffer.AsSpan(0, read);
                    contentHash.Append(chunk);
                    if (contentHash.BytesWritten > maxSize)
                    {
                        throw new KilnException(ErrorKind.TooLarge, $"file is larger than the limit of {maxSize} bytes");
                    }

                    if (flat is null && contentHash.BytesWritten > FlatInMemory)
                    {
                        // Outgrown memory: spooled to a file from here on, what the head holds (all read so far) first.
                        Directory.CreateDirectory(spoolDirectory);
                        flat = new FileStream(flatPath, new FileStreamOptions
                        {
                            Mode = FileMode.CreateNew,
                            Access = FileAccess.Write,
                            BufferSize = 0,
                            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
                        });
                        flat.Write(head.GetBuffer().AsSpan(0, (int)head.Length));
                    }

                    flat?.Write(chunk);
                    if (contentHash.BytesWritten <= keep)
                    {
                        head.Write(chunk);
                    }
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
                flat?.Dispose();
            }

            var size = contentHash.BytesWritten;
            var hash = contentHash.Finish();
            var nar = new NarOfFlatStream(flat is null
                ? new MemoryStream(head.GetBuffer(), 0, (int)head.Length, writable: false)
                : new FileStream(flatPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.Asynchronous | FileOptions.SequentialScan), size);
            await using (nar.ConfigureAwait(false))
            {
                var ingested = await IngestAsync(blobs, nar, null, 0, long.MaxValue, cancellationToken, unpackTo).ConfigureAwait(false);
                return new IngestedNar(ingested.Blob, ingested.NarHash, ingested.NarSize, hash, size <= captureUpTo ? head.ToArray() : null, ingested.TreePath);
            }
        }
        finally
        {
            try
            {
                if (flat is not null)
                {
                    File.Delete(flatPath);
                }
            }
            catch (IOException)
            {
            }
        }
    }

    // Tracks what the NAR holds and computes the content hash a content address is checked against.
    private sealed class IngestVisitor : NarVisitor, IDisposable
    {
        private readonly ContentAddressMethodAndAlgorithm? _method;
        private readonly int _captureUpTo;
        private readonly HashingSink? _hash;
        private ArrayBufferWriter<byte>? _capture;
        private int _nodes;
        private bool _rootIsFile;
        private bool _rootIsExecutable;

        public IngestVisitor(ContentAddressMethodAndAlgorithm? method, int captureUpTo)
        {
            _method = method;
            _captureUpTo = captureUpTo;
            _hash = method is null ? null : new HashingSink(method.Value.Algorithm);
        }

        public byte[]? CapturedContents => _rootIsFile ? _capture?.WrittenSpan.ToArray() : null;

        // Recursive addresses hash the NAR itself.
        public void AppendNar(ReadOnlySpan<byte> data)
        {
            if (_method is { Method: ContentAddressMethod.Recursive })
            {
                _hash!.Append(data);
            }
        }

        public NixHash? ContentHash()
        {
            if (_method is not { } method)
            {
                return null;
            }

            if ((method.Method is ContentAddressMethod.Flat or ContentAddressMethod.Text) && !_rootIsFile)
            {
                throw new KilnException(ErrorKind.Invalid, $"a {method.ToCamString()} content address needs a single regular file, but the NAR holds something else");
            }

            // The hash of a flat or text path covers the bytes, not the mode: an executable variant would be a second
            // NAR under the same globally trusted name. Nix only ever makes such paths non-executable.
            if ((method.Method is ContentAddressMethod.Flat or ContentAddressMethod.Text) && _rootIsExecutable)
            {
                throw new KilnException(ErrorKind.Invalid, $"a {method.ToCamString()} content address needs a non-executable regular file, but the NAR's file is executable");
            }

            if (method.Method == ContentAddressMethod.Git)
            {
                throw new KilnException(ErrorKind.Invalid, "git content addresses are not supported by Kiln");
            }

            return _hash!.Finish();
        }

        public override void RegularFile(bool executable, long size, long contentsOffset)
        {
            if (_nodes++ == 0)
            {
                _rootIsFile = true;
                _rootIsExecutable = executable;
                if (size <= _captureUpTo)
                {
                    _capture = new ArrayBufferWriter<byte>((int)Math.Max(size, 1));
                }
            }
        }

        public override void Contents(ReadOnlySpan<byte> data)
        {
            if (!_rootIsFile)
            {
                return;
            }

            _capture?.Write(data);
            if (_method is { Method: ContentAddressMethod.Flat or ContentAddressMethod.Text })
            {
                _hash!.Append(data);
            }
        }

        public override void Symlink(ReadOnlySpan<byte> target) => _nodes++;

        public override void Directory() => _nodes++;

        public void Dispose() => _hash?.Dispose();
    }
}

/// <summary>The NAR of one regular, non-executable file, produced on the fly from its contents (a file, or memory).</summary>
internal sealed class NarOfFlatStream(Stream file, long size) : Kiln.Nix.ReadOnlyStream
{
    private readonly Stream _file = file;
    private readonly byte[] _header = Header(size);
    private readonly byte[] _trailer = Trailer(size);
    private long _position;

    private static byte[] Header(long size)
    {
        var writer = new ArrayBufferWriter<byte>();
        foreach (var token in new[] { "nix-archive-1"u8.ToArray(), "("u8.ToArray(), "type"u8.ToArray(), "regular"u8.ToArray(), "contents"u8.ToArray() })
        {
            Kiln.Nix.Wire.WireWriter.WriteBytes(writer, token);
        }

        Kiln.Nix.Wire.WireWriter.WriteU64(writer, (ulong)size);
        return writer.WrittenSpan.ToArray();
    }

    private static byte[] Trailer(long size)
    {
        var padding = (int)((8 - (size % 8)) % 8);
        var trailer = new byte[padding + 16];
        BinaryPrimitives.WriteUInt64LittleEndian(trailer.AsSpan(padding), 1);
        trailer[padding + 8] = (byte)')';
        return trailer;
    }

    public override long Length => _header.Length + size + _trailer.Length;

    public override long Position { get => _position; set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        int read;
        if (_position < _header.Length)
        {
            read = (int)Math.Min(buffer.Length, _header.Length - _position);
            _header.AsMemory((int)_position, read).CopyTo(buffer);
        }
        else if (_position < _header.Length + size)
        {
            var want = (int)Math.Min(buffer.Length, _header.Length + size - _position);
            read = await _file.ReadAsync(buffer[..want], cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                throw new IOException("the uploaded file changed while it was being stored");
            }
        }
        else
        {
            var offset = _position - _header.Length - size;
            read = (int)Math.Min(buffer.Length, _trailer.Length - offset);
            _trailer.AsMemory((int)offset, read).CopyTo(buffer);
        }

        _position += read;
        return read;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _file.Dispose();
        }

        base.Dispose(disposing);
    }

    public override async ValueTask DisposeAsync()
    {
        await _file.DisposeAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }
}
