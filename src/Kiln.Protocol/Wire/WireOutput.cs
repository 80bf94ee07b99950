using System.Buffers;
using System.IO.Pipelines;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Wire;
using Kiln.Protocol.Worker;

namespace Kiln.Protocol.Wire;

/// <summary>Sends a file's bytes without copying them through the process (sendfile on the session's socket).</summary>
public interface IFileSender
{
    /// <summary>Sends <paramref name="length"/> bytes of <paramref name="file"/>, from its start, after everything written so far.</summary>
    ValueTask SendFileAsync(FileStream file, long length, CancellationToken cancellationToken);
}

/// <summary>
/// Writes protocol values into a <see cref="PipeWriter"/>. Writes are buffered until <see cref="FlushAsync"/>, which
/// waits when the client is not reading (back-pressure), so a slow client cannot make the server buffer without bound.
/// </summary>
public sealed class WireOutput
{
    private readonly CountingWriter _counting;
    private readonly IFileSender? _fileSender;
    private long _flushedAt;

    public WireOutput(PipeWriter writer, IFileSender? fileSender = null)
    {
        Writer = writer ?? throw new ArgumentNullException(nameof(writer));
        _counting = new CountingWriter(writer);
        _fileSender = fileSender;
    }

    public PipeWriter Writer { get; }

    /// <summary>The writer to hand to <see cref="WireWriter"/> methods (it counts what passes).</summary>
    public IBufferWriter<byte> Buffer => _counting;

    /// <summary>Bytes written so far (including ones still buffered).</summary>
    public long BytesWritten => _counting.Written;

    public void WriteU64(ulong value) => WireWriter.WriteU64(_counting, value);

    public void WriteBool(bool value) => WireWriter.WriteBool(_counting, value);

    public void WriteString(string value) => WireWriter.WriteString(_counting, value);

    public void WriteBytes(ReadOnlySpan<byte> value) => WireWriter.WriteBytes(_counting, value);

    public void WriteStorePath(StorePath path) => WriteString(path.FullPath);

    public void WriteOptionalStorePath(StorePath? path) => WriteString(path?.FullPath ?? "");

    public void WriteStorePaths(IEnumerable<StorePath> paths) => WireWriter.WriteStorePaths(_counting, paths);

    public void WriteStrings(IReadOnlyCollection<string> values) => WireWriter.WriteStrings(_counting, values);

    public void WriteStringSet(IEnumerable<string> values) => WireWriter.WriteStringSet(values, _counting);

    /// <summary>ValidPathInfo as the worker protocol's <paramref name="version"/> has it (Nix's <c>ValidPathInfo::write</c>).</summary>
    public void WritePathInfo(Kiln.Nix.Store.ValidPathInfo info, bool includePath, ProtocolVersion version)
    {
        ArgumentNullException.ThrowIfNull(info);
        if (includePath)
        {
            WriteStorePath(info.Path);
        }

        WriteOptionalStorePath(info.Deriver);
        WriteString(info.NarHash.ToBase16());
        WriteStorePaths(info.References);
        WriteU64((ulong)info.RegistrationTime);
        WriteU64((ulong)info.NarSize);
        if (version.AtLeast(16))
        {
            WriteBool(info.Ultimate);
            WriteStringSet(info.Signatures);
            WriteString(info.ContentAddress?.ToString() ?? "");
        }
    }

    /// <summary>Writes raw bytes (a NAR after NarFromPath, say).</summary>
    public void WriteRaw(ReadOnlySpan<byte> data)
    {
        data.CopyTo(_counting.GetSpan(data.Length));
        _counting.Advance(data.Length);
    }

    /// <summary>Whether enough is buffered that a flush is worthwhile.</summary>
    public bool ShouldFlush => BytesWritten - _flushedAt >= 64 * 1024;

    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        _flushedAt = BytesWritten;
        var result = await Writer.FlushAsync(cancellationToken).ConfigureAwait(false);
        if (result.IsCompleted || result.IsCanceled)
        {
            throw new ProtocolViolationException("the client stopped reading");
        }
    }

    /// <summary>
    /// Sends a NAR after everything written so far: by sendfile when it is a local file and the transport offers
    /// that, otherwise by copying through the pipe in 256 KiB pieces with back-pressure.
    /// </summary>
    public async ValueTask SendNarAsync(NarBlob blob, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(blob);
        await FlushAsync(cancellationToken).ConfigureAwait(false);
        if (_fileSender is not null && blob.Content is FileStream file)
        {
            await _fileSender.SendFileAsync(file, blob.Size, cancellationToken).ConfigureAwait(false);
            _counting.AddExternal(blob.Size);
            _flushedAt = BytesWritten;
            return;
        }

        var remaining = blob.Size;
        while (remaining > 0)
        {
            var memory = _counting.GetMemory((int)Math.Min(remaining, 256 * 1024));
            var read = await blob.Content.ReadAsync(memory[..(int)Math.Min(memory.Length, remaining)], cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                throw new IOException($"the NAR {blob.NarHash} is shorter than its recorded size");
            }

            _counting.Advance(read);
            remaining -= read;
            await FlushAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private sealed class CountingWriter(IBufferWriter<byte> inner) : IBufferWriter<byte>
    {
        public long Written { get; private set; }

        public void Advance(int count)
        {
            inner.Advance(count);
            Written += count;
        }

        public Memory<byte> GetMemory(int sizeHint = 0) => inner.GetMemory(sizeHint);

        public Span<byte> GetSpan(int sizeHint = 0) => inner.GetSpan(sizeHint);

        public void AddExternal(long count) => Written += count;
    }
}
