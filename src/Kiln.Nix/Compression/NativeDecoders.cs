using System.Runtime.InteropServices;

namespace Kiln.Nix.Compression;

// lzma_stream: next_in, avail_in, total_in, next_out, avail_out, total_out, allocator, internal, 4 reserved
// pointers, 2 uint64 and 2 size_t reserved, 2 reserved enums. LZMA_STREAM_INIT is all zeros.
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct LzmaStream
{
    public byte* NextIn;
    public nuint AvailIn;
    public ulong TotalIn;
    public byte* NextOut;
    public nuint AvailOut;
    public ulong TotalOut;
    public fixed ulong Reserved[6];
    public ulong SeekPos;
    public ulong ReservedInt2;
    public nuint ReservedInt3;
    public nuint ReservedInt4;
    public int ReservedEnum1;
    public int ReservedEnum2;
}

/// <summary>
/// xz through liblzma's stream decoder (concatenated streams allowed, as Nix sets it up) with a memory limit Nix does
/// not set: an xz header can ask for a dictionary of up to 4 GiB, which a hostile upload would make Kiln allocate.
/// </summary>
internal sealed unsafe partial class XzDecoder(Stream inner)
    : LzmaCoder(inner, stream => lzma_stream_decoder((LzmaStream*)stream, MemoryLimit, Concatenated), "decoder")
{
    private const uint Concatenated = 0x08;
    private const int MemoryLimitReached = 6;

    /// <summary>What one xz decoder may use: <c>xz -9</c> (64 MiB dictionary) needs about 65 MiB to decompress.</summary>
    public const ulong MemoryLimit = 256UL << 20;

    protected override DecompressionException Failed(int result) => result == MemoryLimitReached
        ? new DecompressionException($"xz data that needs more than {MemoryLimit >> 20} MiB of memory to decompress is refused (xz -9 needs 65 MiB)")
        : new DecompressionException($"xz data is corrupt (liblzma error {result})");

    [LibraryImport("liblzma.so.5")]
    private static partial int lzma_stream_decoder(LzmaStream* stream, ulong memlimit, uint flags);
}

/// <summary>
/// liblzma's streams, either way: the stream is set up by the subclass's initialiser, then run (and finished once the
/// input ends) with <c>lzma_code</c>; a result other than OK and end of stream is the subclass's error.
/// </summary>
internal abstract unsafe partial class LzmaCoder : NativeCoder
{
    private const int Run = 0, Finish = 3;
    private const int Ok = 0, StreamEnd = 1;

    private LzmaStream* _stream;

    protected LzmaCoder(Stream inner, Func<nint, int> initialise, string what) : base(inner)
    {
        ArgumentNullException.ThrowIfNull(initialise);
        _stream = (LzmaStream*)NativeMemory.AllocZeroed((nuint)sizeof(LzmaStream));
        var result = initialise((nint)_stream);
        if (result != Ok)
        {
            Free();
            throw new DecompressionException($"cannot start an xz {what} (liblzma error {result})");
        }
    }

    protected override string Name => "xz";

    /// <summary>The error for a result of <c>lzma_code</c> other than OK and end of stream.</summary>
    protected abstract DecompressionException Failed(int result);

    protected override (int, int, bool) Step(ReadOnlySpan<byte> input, Span<byte> output, bool inputDone)
    {
        fixed (byte* i = input)
        fixed (byte* o = output)
        {
            _stream->NextIn = i;
            _stream->AvailIn = (nuint)input.Length;
            _stream->NextOut = o;
            _stream->AvailOut = (nuint)output.Length;
            var result = lzma_code(_stream, inputDone ? Finish : Run);
            var consumed = input.Length - (int)_stream->AvailIn;
            var produced = output.Length - (int)_stream->AvailOut;
            return result switch
            {
                Ok => (consumed, produced, false),
                StreamEnd => (consumed, produced, true),
                _ => throw Failed(result),
            };
        }
    }

    protected override void Free()
    {
        if (_stream is not null)
        {
            lzma_end(_stream);
            NativeMemory.Free(_stream);
            _stream = null;
        }
    }

    [LibraryImport("liblzma.so.5")]
    private static partial int lzma_code(LzmaStream* stream, int action);

    [LibraryImport("liblzma.so.5")]
    private static partial void lzma_end(LzmaStream* stream);
}

/// <summary>zstd through libzstd's streaming decompressor (several frames in a row allowed, as the zstd tool writes them).</summary>
internal sealed unsafe partial class ZstdDecoder : NativeCoder
{
    [StructLayout(LayoutKind.Sequential)]
    private struct Buffer
    {
        public byte* Data;
        public nuint Size;
        public nuint Pos;
    }

    private nint _stream;
    private bool _inFrame;

    public ZstdDecoder(Stream inner) : base(inner)
    {
        _stream = ZSTD_createDStream();
        if (_stream == 0 || ZSTD_isError(ZSTD_initDStream(_stream)) != 0)
        {
            Free();
            throw new DecompressionException("cannot start a zstd decoder");
        }
    }

    protected override string Name => "zstd";

    protected override (int, int, bool) Step(ReadOnlySpan<byte> input, Span<byte> output, bool inputDone)
    {
        if (input.Length == 0 && inputDone)
        {
            // Between frames the data may end; inside one it may not.
            return (0, 0, !_inFrame);
        }

        fixed (byte* i = input)
        fixed (byte* o = output)
        {
            var inBuffer = new Buffer { Data = i, Size = (nuint)input.Length };
            var outBuffer = new Buffer { Data = o, Size = (nuint)output.Length };
            var hint = ZSTD_decompressStream(_stream, &outBuffer, &inBuffer);
            if (ZSTD_isError(hint) != 0)
            {
                throw new DecompressionException($"zstd data is corrupt ({Marshal.PtrToStringUTF8(ZSTD_getErrorName(hint))})");
            }

            _inFrame = hint != 0;
            return ((int)inBuffer.Pos, (int)outBuffer.Pos, false);
        }
    }

    protected override void Free()
    {
        if (_stream != 0)
        {
            _ = ZSTD_freeDStream(_stream);
            _stream = 0;
        }
    }

    [LibraryImport("libzstd.so.1")]
    private static partial nint ZSTD_createDStream();

    [LibraryImport("libzstd.so.1")]
    private static partial nuint ZSTD_initDStream(nint stream);

    [LibraryImport("libzstd.so.1")]
    private static partial nuint ZSTD_decompressStream(nint stream, Buffer* output, Buffer* input);

    [LibraryImport("libzstd.so.1")]
    private static partial nuint ZSTD_freeDStream(nint stream);

    [LibraryImport("libzstd.so.1")]
    private static partial uint ZSTD_isError(nuint code);

    [LibraryImport("libzstd.so.1")]
    private static partial nint ZSTD_getErrorName(nuint code);
}

/// <summary>bzip2 through libbz2 (the narinfo default when <c>Compression:</c> is absent).</summary>
internal sealed unsafe partial class Bzip2Decoder : NativeCoder
{
    [StructLayout(LayoutKind.Sequential)]
    private struct BzStream
    {
        public byte* NextIn;
        public uint AvailIn;
        public uint TotalInLo32;
        public uint TotalInHi32;
        public byte* NextOut;
        public uint AvailOut;
        public uint TotalOutLo32;
        public uint TotalOutHi32;
        public nint State;
        public nint Alloc;
        public nint Free;
        public nint Opaque;
    }

    private const int Ok = 0, StreamEnd = 4;

    private BzStream* _stream;

    public Bzip2Decoder(Stream inner) : base(inner)
    {
        _stream = (BzStream*)NativeMemory.AllocZeroed((nuint)sizeof(BzStream));
        var result = BZ2_bzDecompressInit(_stream, 0, 0);
        if (result != Ok)
        {
            NativeMemory.Free(_stream);
            _stream = null;
            throw new DecompressionException($"cannot start a bzip2 decoder (libbz2 error {result})");
        }
    }

    protected override string Name => "bzip2";

    protected override (int, int, bool) Step(ReadOnlySpan<byte> input, Span<byte> output, bool inputDone)
    {
        if (input.Length == 0 && inputDone)
        {
            return (0, 0, false); // libbz2 saw no end of stream: the caller reports truncation
        }

        fixed (byte* i = input)
        fixed (byte* o = output)
        {
            _stream->NextIn = i;
            _stream->AvailIn = (uint)input.Length;
            _stream->NextOut = o;
            _stream->AvailOut = (uint)output.Length;
            var result = BZ2_bzDecompress(_stream);
            var consumed = input.Length - (int)_stream->AvailIn;
            var produced = output.Length - (int)_stream->AvailOut;
            return result switch
            {
                Ok => (consumed, produced, false),
                StreamEnd => (consumed, produced, true),
                _ => throw new DecompressionException($"bzip2 data is corrupt (libbz2 error {result})"),
            };
        }
    }

    protected override void Free()
    {
        if (_stream is not null)
        {
            _ = BZ2_bzDecompressEnd(_stream);
            NativeMemory.Free(_stream);
            _stream = null;
        }
    }

    [LibraryImport("libbz2.so.1.0")]
    private static partial int BZ2_bzDecompressInit(BzStream* stream, int verbosity, int small);

    [LibraryImport("libbz2.so.1.0")]
    private static partial int BZ2_bzDecompress(BzStream* stream);

    [LibraryImport("libbz2.so.1.0")]
    private static partial int BZ2_bzDecompressEnd(BzStream* stream);
}
