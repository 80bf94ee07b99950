using System.Buffers;
using System.Buffers.Binary;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;

namespace Kiln.Store.Blobs;

/// <summary>A NAR written to a temporary blob, with what was learnt while it streamed past.</summary>
public sealed record IngestedNar(string TempPath, NixHash NarHash, long NarSize, NixHash? ContentHash, byte[]? FileContents)
{
    /// <summary>The NAR unpacked as it streamed, when asked for: a temporary tree to rename into place.</summary>
    public string? TreePath { get; init; }
}

/// <summary>
/// Streams an upload into a temporary blob in one pass: SHA-256 and size of the NAR, NAR validation (a malformed or
/// hostile archive is refused before anything is registered), the content hash a content address needs (the NAR
/// under another algorithm, or the single file's contents for flat and text addresses), and the contents of a small
/// single-file NAR when the caller wants them (a .drv, to learn its outputs). Memory stays constant whatever the
/// NAR's size. On any failure the temporary file is removed.
/// </summary>
public static class NarIngest
{
    private const int BufferSize = 256 * 1024;

    /// <summary>Copies the NAR from <paramref name="source"/> to a new temporary blob.</summary>
    /// <param name="blobs">Where the temporary blob goes.</param>
    /// <param name="source">The NAR.</param>
    /// <param name="contentMethod">With a content address to check: how its hash is computed.</param>
    /// <param name="captureFileUpTo">Keep the single regular file's contents if it is at most this many bytes.</param>
    /// <param name="maxSize">Refuse a NAR larger than this.</param>
    /// <param name="unpackTo">Also unpack the NAR, canonically, at this (new) path as it streams.</param>
    /// <param name="cancellationToken">Stops the copy.</param>
    public static async Task<IngestedNar> IngestAsync(BlobStore blobs, Stream source, ContentAddressMethodAndAlgorithm? contentMethod,
        int captureFileUpTo, long maxSize, CancellationToken cancellationToken, string? unpackTo = null)
    {
        ArgumentNullException.ThrowIfNull(blobs);
        ArgumentNullException.ThrowIfNull(source);
        var file = blobs.CreateTemp(out var tempPath);
        var succeeded = false;
        using var extractor = unpackTo is null ? null : new NarExtractor(unpackTo, canonical: true);
        try
        {
            using var narHash = new HashingSink(NixHashAlgorithm.Sha256);
            using var visitor = new IngestVisitor(contentMethod, captureFileUpTo);
            var parser = new NarParser(extractor is null ? visitor : new BothVisitors(visitor, extractor));
            var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
            try
            {
                await using (file.ConfigureAwait(false))
                {
                    int read;
                    while ((read = await FillAsync(source, buffer, cancellationToken).ConfigureAwait(false)) > 0)
                    {
                        var chunk = buffer.AsSpan(0, read);
                        if (parser.Feed(chunk) < read)
                        {
                            throw new NixErrorException("bad archive: trailing data after the end of the NAR");
                        }

                        narHash.Append(chunk);
                        visitor.AppendNar(chunk);
                        if (narHash.BytesWritten > maxSize)
                        {
                            throw new NixErrorException($"NAR is larger than the limit of {maxSize} bytes");
                        }

                        file.Write(chunk);
                    }

                    parser.Finish();
                    blobs.Seal(file);
                }
            }
            catch (NarException e)
            {
                throw new NixErrorException(e.Message);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }

            var size = narHash.BytesWritten;
            var result = new IngestedNar(tempPath, narHash.Finish(), size, visitor.ContentHash(), visitor.CapturedContents) { TreePath = unpackTo };
            succeeded = true;
            return result;
        }
        finally
        {
            if (!succeeded)
            {
                BlobStore.DeleteTemp(tempPath);
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
    /// Writes flat contents (text and flat uploads) as the NAR of one regular file: the contents go to a temporary
    /// file first, to learn their size and hash, then into a NAR blob. Returns the blob and the contents' hash.
    /// </summary>
    public static async Task<IngestedNar> IngestFlatAsync(BlobStore blobs, Stream contents, NixHashAlgorithm contentAlgorithm,
        int captureUpTo, long maxSize, CancellationToken cancellationToken, string? unpackTo = null)
    {
        ArgumentNullException.ThrowIfNull(blobs);
        ArgumentNullException.ThrowIfNull(contents);
        var flat = blobs.CreateTemp(out var flatPath);
        try
        {
            using var contentHash = new HashingSink(contentAlgorithm);
            var captured = new ArrayBufferWriter<byte>();
            var buffer = ArrayPool<byte>.Shared.Rent(BufferSize);
            try
            {
                await using (flat.ConfigureAwait(false))
                {
                    int read;
                    while ((read = await FillAsync(contents, buffer, cancellationToken).ConfigureAwait(false)) > 0)
                    {
                        contentHash.Append(buffer.AsSpan(0, read));
                        if (contentHash.BytesWritten > maxSize)
                        {
                            throw new NixErrorException($"file is larger than the limit of {maxSize} bytes");
                        }

                        if (contentHash.BytesWritten <= captureUpTo)
                        {
                            captured.Write(buffer.AsSpan(0, read));
                        }

                        flat.Write(buffer.AsSpan(0, read));
                    }
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }

            var size = contentHash.BytesWritten;
            var hash = contentHash.Finish();
            var nar = new NarOfFileStream(flatPath, size);
            await using (nar.ConfigureAwait(false))
            {
                var ingested = await IngestAsync(blobs, nar, null, 0, long.MaxValue, cancellationToken, unpackTo).ConfigureAwait(false);
                return ingested with { ContentHash = hash, FileContents = size <= captureUpTo ? captured.WrittenSpan.ToArray() : null };
            }
        }
        finally
        {
            BlobStore.DeleteTemp(flatPath);
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
                throw new NixErrorException($"a {method.ToCamString()} content address needs a single regular file, but the NAR holds something else");
            }

            if (method.Method == ContentAddressMethod.Git)
            {
                throw new NixErrorException("git content addresses are not supported by Kiln");
            }

            return _hash!.Finish();
        }

        public override void RegularFile(bool executable, long size, long contentsOffset)
        {
            if (_nodes++ == 0)
            {
                _rootIsFile = true;
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

/// <summary>The NAR of one regular, non-executable file, produced on the fly from the file.</summary>
internal sealed class NarOfFileStream(string path, long size) : Kiln.Nix.ReadOnlyStream
{
    private readonly FileStream _file = new(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.Asynchronous | FileOptions.SequentialScan);
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
