using System.Runtime.InteropServices;

namespace Kiln.Nix.Compression;

/// <summary>xz through liblzma's easy encoder with a CRC64 check, as Nix writes <c>.nar.xz</c> (its default level is 6).</summary>
internal sealed unsafe partial class XzEncoder(Stream inner, int level)
    : LzmaCoder(inner, stream => lzma_easy_encoder((LzmaStream*)stream, (uint)level, CheckCrc64), $"encoder at level {level}")
{
    private const int CheckCrc64 = 4;

    protected override DecompressionException Failed(int result) => new($"the xz encoder failed (liblzma error {result})");

    [LibraryImport("liblzma.so.5")]
    private static partial int lzma_easy_encoder(LzmaStream* stream, uint preset, int check);
}

/// <summary>zstd through libzstd's streaming compressor: one frame, its content checksum on (as the zstd tool writes it).</summary>
internal sealed unsafe partial class ZstdEncoder : NativeCoder
{
    [StructLayout(LayoutKind.Sequential)]
    private struct Buffer
    {
        public byte* Data;
        public nuint Size;
        public nuint Pos;
    }

    private const int Continue = 0, End = 2;
    private const int CompressionLevel = 100, ChecksumFlag = 201;

    private nint _context;

    public ZstdEncoder(Stream inner, int level) : base(inner)
    {
        _context = ZSTD_createCCtx();
        if (_context == 0 || ZSTD_isError(ZSTD_CCtx_setParameter(_context, CompressionLevel, level)) != 0
            || ZSTD_isError(ZSTD_CCtx_setParameter(_context, ChecksumFlag, 1)) != 0)
        {
            Free();
            throw new DecompressionException($"cannot start a zstd encoder at level {level}");
        }
    }

    protected override string Name => "zstd";

    protected override (int, int, bool) Step(ReadOnlySpan<byte> input, Span<byte> output, bool inputDone)
    {
        fixed (byte* i = input)
        fixed (byte* o = output)
        {
            var inBuffer = new Buffer { Data = i, Size = (nuint)input.Length };
            var outBuffer = new Buffer { Data = o, Size = (nuint)output.Length };
            var remaining = ZSTD_compressStream2(_context, &outBuffer, &inBuffer, inputDone ? End : Continue);
            if (ZSTD_isError(remaining) != 0)
            {
                throw new DecompressionException($"the zstd encoder failed ({Marshal.PtrToStringUTF8(ZSTD_getErrorName(remaining))})");
            }

            return ((int)inBuffer.Pos, (int)outBuffer.Pos, inputDone && remaining == 0 && inBuffer.Pos == inBuffer.Size);
        }
    }

    protected override void Free()
    {
        if (_context != 0)
        {
            _ = ZSTD_freeCCtx(_context);
            _context = 0;
        }
    }

    [LibraryImport("libzstd.so.1")]
    private static partial nint ZSTD_createCCtx();

    [LibraryImport("libzstd.so.1")]
    private static partial nuint ZSTD_CCtx_setParameter(nint context, int parameter, int value);

    [LibraryImport("libzstd.so.1")]
    private static partial nuint ZSTD_compressStream2(nint context, Buffer* output, Buffer* input, int endOp);

    [LibraryImport("libzstd.so.1")]
    private static partial nuint ZSTD_freeCCtx(nint context);

    [LibraryImport("libzstd.so.1")]
    private static partial uint ZSTD_isError(nuint code);

    [LibraryImport("libzstd.so.1")]
    private static partial nint ZSTD_getErrorName(nuint code);
}
