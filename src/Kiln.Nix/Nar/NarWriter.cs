using System.Buffers;
using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;

namespace Kiln.Nix.Nar;

/// <summary>Fills <paramref name="destination"/> with the next bytes of a file; returns how many, 0 at its end.</summary>
public delegate int ContentSource(Span<byte> destination);

/// <summary>
/// Serialises file system objects as a NAR onto a stream. It is an <see cref="INarVisitor"/>, so a
/// <see cref="NarParser"/> can drive it to re-emit an archive, and <see cref="NarDumper"/> drives it from a
/// directory tree. Output goes through one large buffer so many small files become few large writes; file
/// contents can be read straight into that buffer (<see cref="CopyContents"/>). With <c>pipelined</c>, full buffers are
/// written by a second thread, so producing the archive (reading files) overlaps with consuming it (hashing,
/// writing). The writer checks that each file gets exactly the bytes it announced; ordering and names are the
/// caller's responsibility. Call <see cref="Flush"/> at the end: <see cref="Dispose"/> alone drops a pipelined tail.
/// </summary>
public sealed class NarWriter : INarVisitor, IDisposable
{
    // Files at least this large are copied by the kernel (sendfile) when writing to a file descriptor.
    private const long SendFileThreshold = 64 * 1024;

    private readonly Stream? _output;
    private readonly SafeFileHandle? _outputHandle;
    private readonly BlockPipe? _pipe;
    private bool _sendFileWorks = true;
    private byte[] _buffer;
    private bool _pooled; // _buffer is the shared pool's, to be given back once (never a pipelined writer's)
    private int _used;
    private long _contentsRemaining;
    private long _contentsSize;
    private bool _inFile;

    /// <summary>Starts an archive on <paramref name="output"/> (writes the magic).</summary>
    public NarWriter(Stream output, int bufferSize = 1 << 20, bool pipelined = false)
    {
        _output = output ?? throw new ArgumentNullException(nameof(output));
        bufferSize = Math.Max(bufferSize, 4096);
        // A pipelined writer's buffers change hands with its pipe's, so they are its own; the other's comes from the
        // shared pool: a megabyte per archive would be a large-object allocation for every NAR written (every
        // build's output), each one zeroed, and together they brought on a full collection every second or so of a
        // busy build server.
        _pipe = pipelined ? new BlockPipe(output, bufferSize) : null;
        _buffer = pipelined ? new byte[bufferSize] : RentBuffer(bufferSize);
        WriteToken("nix-archive-1"u8);
    }

    /// <summary>
    /// Starts an archive on an open file descriptor (stdout, a file, a pipe, a socket). Everything is written with
    /// <c>write</c> on that descriptor, and the contents of large files (see <see cref="CopyFileContents"/>) are copied
    /// by the kernel with <c>sendfile</c>, never passing through this process.
    /// </summary>
    public NarWriter(SafeFileHandle output, int bufferSize = 1 << 20)
    {
        ArgumentNullException.ThrowIfNull(output);
        _outputHandle = output;
        _buffer = RentBuffer(Math.Max(bufferSize, 4096));
        WriteToken("nix-archive-1"u8);
    }

    /// <summary>Total bytes written so far, including what is still buffered.</summary>
    public long BytesWritten { get; private set; }

    public void RegularFile(bool executable, long size, long contentsOffset = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        WriteToken("("u8);
        WriteToken("type"u8);
        WriteToken("regular"u8);
        if (executable)
        {
            WriteToken("executable"u8);
            WriteToken(""u8);
        }

        WriteToken("contents"u8);
        WriteU64((ulong)size);
        _contentsSize = _contentsRemaining = size;
        _inFile = true;
    }

    public void Contents(ReadOnlySpan<byte> data)
    {
        if (!_inFile || data.Length > _contentsRemaining)
        {
            throw new InvalidOperationException("more contents than the file's announced size");
        }

        _contentsRemaining -= data.Length;
        WriteRaw(data);
    }

    /// <summary>Copies the announced number of bytes from <paramref name="source"/>, reading straight into the output buffer.</summary>
    /// <exception cref="IOException">The source ends early (the file changed while being archived).</exception>
    public void CopyContents(ContentSource source, Func<string> describe)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(describe);
        while (_contentsRemaining > 0)
        {
            if (_used == _buffer.Length)
            {
                FlushBuffer();
            }

            var want = (int)Math.Min(_buffer.Length - _used, _contentsRemaining);
            var read = source(_buffer.AsSpan(_used, want));
            if (read <= 0)
            {
                throw new IOException($"file '{describe()}' changed size while it was being archived");
            }

            _used += read;
            BytesWritten += read;
            _contentsRemaining -= read;
        }
    }

    /// <summary>
    /// Copies the announced number of bytes from the open file <paramref name="fd"/> (from offset 0): inside the
    /// kernel when writing to a descriptor and the file is large, otherwise through the buffer.
    /// </summary>
    internal void CopyFileContents(int fd, Func<string> describe)
    {
        if (_outputHandle is not null && _sendFileWorks && _contentsRemaining >= SendFileThreshold)
        {
            FlushBuffer();
            var copied = Posix.SendFile((int)_outputHandle.DangerousGetHandle(), fd, 0, _contentsRemaining, describe);
            if (copied >= 0)
            {
                if (copied < _contentsRemaining)
                {
                    throw new IOException($"file '{describe()}' changed size while it was being archived");
                }

                BytesWritten += copied;
                _contentsRemaining = 0;
                return;
            }

            _sendFileWorks = false;
        }

        CopyContents(buffer => Posix.Read(fd, buffer, describe), describe);
    }

    public void EndRegularFile()
    {
        if (!_inFile || _contentsRemaining != 0)
        {
            throw new InvalidOperationException("file ended before its announced size");
        }

        _inFile = false;
        WritePadding(_contentsSize);
        WriteToken(")"u8);
    }

    public void Symlink(ReadOnlySpan<byte> target)
    {
        WriteToken("("u8);
        WriteToken("type"u8);
        WriteToken("symlink"u8);
        WriteToken("target"u8);
        WriteToken(target);
        WriteToken(")"u8);
    }

    public void Directory()
    {
        WriteToken("("u8);
        WriteToken("type"u8);
        WriteToken("directory"u8);
    }

    public void Entry(ReadOnlySpan<byte> name)
    {
        WriteToken("entry"u8);
        WriteToken("("u8);
        WriteToken("name"u8);
        WriteToken(name);
        WriteToken("node"u8);
    }

    public void EndEntry() => WriteToken(")"u8);

    public void EndDirectory() => WriteToken(")"u8);

    /// <summary>Writes everything buffered to the stream, waits for a pipelined writer, and flushes the stream.</summary>
    public void Flush()
    {
        FlushBuffer();
        _pipe?.Complete();
        _output?.Flush();
    }

    public void Dispose()
    {
        try
        {
            if (_pipe is null && _buffer.Length > 0)
            {
                FlushBuffer();
            }

            _pipe?.Dispose();
        }
        finally
        {
            if (_pooled)
            {
                // Nothing may write into it once it is back: an empty buffer takes its place.
                var buffer = _buffer;
                (_buffer, _used, _pooled) = ([], 0, false);
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
    }

    private byte[] RentBuffer(int size)
    {
        _pooled = true;
        return ArrayPool<byte>.Shared.Rent(size);
    }

    private void WriteToken(ReadOnlySpan<byte> value)
    {
        WriteU64((ulong)value.Length);
        WriteRaw(value);
        WritePadding(value.Length);
    }

    private void WriteU64(ulong value)
    {
        Span<byte> bytes = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, value);
        WriteRaw(bytes);
    }

    private void WritePadding(long length)
    {
        var padding = (int)((8 - (length % 8)) % 8);
        if (padding > 0)
        {
            Span<byte> zeros = stackalloc byte[8];
            zeros.Clear();
            WriteRaw(zeros[..padding]);
        }
    }

    private void WriteRaw(ReadOnlySpan<byte> data)
    {
        BytesWritten += data.Length;
        while (!data.IsEmpty)
        {
            if (_used == _buffer.Length)
            {
                FlushBuffer();
            }

            // Large pieces bypass the buffer once it is empty.
            if (_pipe is null && _used == 0 && data.Length >= _buffer.Length)
            {
                WriteOut(data);
                return;
            }

            var take = Math.Min(_buffer.Length - _used, data.Length);
            data[..take].CopyTo(_buffer.AsSpan(_used));
            _used += take;
            data = data[take..];
        }
    }

    private void FlushBuffer()
    {
        if (_used == 0)
        {
            return;
        }

        if (_pipe is not null)
        {
            _buffer = _pipe.Swap(_buffer, _used);
        }
        else
        {
            WriteOut(_buffer.AsSpan(0, _used));
        }

        _used = 0;
    }

    private void WriteOut(ReadOnlySpan<byte> data)
    {
        if (_outputHandle is not null)
        {
            Posix.WriteAll((int)_outputHandle.DangerousGetHandle(), data, () => "the archive's output");
        }
        else
        {
            _output!.Write(data);
        }
    }
}
