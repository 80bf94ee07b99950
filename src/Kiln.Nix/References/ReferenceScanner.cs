using System.Buffers;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.References;

/// <summary>
/// Finds which of a set of store paths a byte stream refers to, the way Nix scans build outputs
/// (<c>src/libstore/references.cc</c>, <c>RefScanSink</c>): a reference is any occurrence of a path's 32-character hash
/// part, wherever it appears (inside longer strings, without the store prefix, split across writes). Feed the
/// stream in chunks of any size; the scanner keeps only the last 31 bytes between chunks, so memory is constant.
/// <para>
/// The scan skips through runs of bytes that cannot be in a hash part, and within a run of Nix32 digits looks each
/// 32-byte window up in a hash table keyed by the window's 160 bits.
/// </para>
/// </summary>
public sealed class ReferenceScanner
{
    private const int HashLength = StorePath.HashLength;
    private static readonly SearchValues<byte> Digits = SearchValues.Create("0123456789abcdfghijklmnpqrsvwxyz"u8);

    private readonly Dictionary<HashKey, StorePath> _candidates = [];
    private readonly HashSet<StorePath> _found = [];

    // The digits at the end of the previous chunk (up to 31), which may start a hash part that continues.
    private readonly byte[] _carry = new byte[2 * HashLength];
    private int _carryLength;

    /// <summary>Looks for the hash parts of <paramref name="candidates"/>.</summary>
    public ReferenceScanner(IEnumerable<StorePath> candidates)
    {
        ArgumentNullException.ThrowIfNull(candidates);
        Span<byte> ascii = stackalloc byte[HashLength];
        foreach (var path in candidates)
        {
            // The base name's first characters, not HashPart (a new string each time it is read).
            var digits = path.BaseName.AsSpan(0, HashLength);
            for (var i = 0; i < HashLength; i++)
            {
                ascii[i] = (byte)digits[i];
            }

            _candidates[HashKey.From(ascii)] = path;
        }
    }

    /// <summary>The candidates seen so far.</summary>
    public IReadOnlySet<StorePath> Found => _found;

    /// <summary>Scans the next chunk of the stream.</summary>
    public void Scan(ReadOnlySpan<byte> data)
    {
        if (_candidates.Count == 0 || _found.Count == _candidates.Count || data.IsEmpty)
        {
            return;
        }

        // Finish a run of digits that began in an earlier chunk: join its tail with this chunk's leading digits.
        if (_carryLength > 0)
        {
            var leading = data.IndexOfAnyExcept(Digits);
            if (leading < 0)
            {
                leading = data.Length;
            }

            var take = Math.Min(leading, HashLength - 1);
            data[..take].CopyTo(_carry.AsSpan(_carryLength));
            ScanRun(_carry.AsSpan(0, _carryLength + take));
            if (leading == data.Length && take == data.Length)
            {
                // Still inside the run: keep its last 31 digits.
                KeepTail(_carry.AsSpan(0, _carryLength + take));
                return;
            }

            _carryLength = 0;
        }

        var position = 0;
        while (position < data.Length)
        {
            var start = data[position..].IndexOfAny(Digits);
            if (start < 0)
            {
                return;
            }

            start += position;
            var length = data[start..].IndexOfAnyExcept(Digits);
            var runEnd = length < 0 ? data.Length : start + length;
            var run = data[start..runEnd];
            ScanRun(run);
            if (runEnd == data.Length)
            {
                KeepTail(run);
                return;
            }

            position = runEnd;
        }
    }

    private void KeepTail(ReadOnlySpan<byte> run)
    {
        var keep = Math.Min(run.Length, HashLength - 1);
        run[^keep..].CopyTo(_carry);
        _carryLength = keep;
    }

    // Looks up every 32-byte window of a run of digits.
    private void ScanRun(ReadOnlySpan<byte> run)
    {
        for (var i = 0; i + HashLength <= run.Length; i++)
        {
            if (_candidates.TryGetValue(HashKey.From(run.Slice(i, HashLength)), out var path))
            {
                _found.Add(path);
            }
        }
    }

    /// <summary>Scans a whole stream and returns the candidates it refers to.</summary>
    public static IReadOnlySet<StorePath> ScanStream(Stream stream, IEnumerable<StorePath> candidates)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var scanner = new ReferenceScanner(candidates);
        var buffer = ArrayPool<byte>.Shared.Rent(1 << 16);
        try
        {
            int read;
            while ((read = stream.Read(buffer, 0, buffer.Length)) > 0)
            {
                scanner.Scan(buffer.AsSpan(0, read));
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }

        return scanner.Found;
    }

    // 32 Nix32 digits packed into 160 bits.
    private readonly record struct HashKey(ulong A, ulong B, uint C)
    {
        public static HashKey From(ReadOnlySpan<byte> digits)
        {
            ulong a = 0, b = 0;
            uint c = 0;
            for (var i = 0; i < 12; i++)
            {
                a = (a << 5) | Value(digits[i]);
            }

            for (var i = 12; i < 24; i++)
            {
                b = (b << 5) | Value(digits[i]);
            }

            for (var i = 24; i < 32; i++)
            {
                c = (c << 5) | (uint)Value(digits[i]);
            }

            return new HashKey(a, b, c);
        }

        private static ulong Value(byte digit) => (ulong)Nix32.DigitValue(digit);
    }
}
