using System.Buffers.Binary;
using System.Text;

namespace Kiln.Nix.Nar;

/// <summary>
/// A push parser and validator for the Nix archive format. Feed it the archive in chunks of any size
/// (down to one byte); it reports file system objects to an <see cref="INarVisitor"/> as soon as they are
/// complete, passes file contents through without buffering them, and holds at most one token (bounded by
/// <see cref="NarLimits"/>) in memory, so memory does not grow with the archive.
/// <para>
/// Grammar (Nix's <c>src/libutil/archive.cc</c>; every token is a u64-length-prefixed string padded with
/// zeros to 8 bytes):
/// <c>nar = "nix-archive-1" node; node = "(" "type" ("regular" ["executable" ""] "contents" bytes
/// | "symlink" "target" target | "directory" {"entry" "(" "name" name "node" node ")"}) ")"</c>.
/// It rejects what Nix rejects and what would be unsafe to unpack: entry names that are empty,
/// <c>.</c>, <c>..</c> or contain <c>/</c> or NUL; entries out of order or repeated; non-zero padding;
/// unknown tokens; empty or NUL-containing symlink targets; over-long strings; nesting beyond the limit.
/// </para>
/// <para>
/// <see cref="Feed"/> stops consuming at the end of the archive and returns how much it used, so a NAR
/// embedded in a protocol stream (NarFromPath, old AddToStore) is delimited exactly. Call <see cref="Finish"/>
/// when the input ends to turn a short archive into an error.
/// </para>
/// </summary>
public sealed class NarParser
{
    private static readonly byte[] Magic = "nix-archive-1"u8.ToArray();

    private enum State
    {
        Magic,
        NodeOpen,
        TypeTag,
        Type,
        RegularTag,
        ExecutableValue,
        ContentsTag,
        ContentsSize,
        ContentsData,
        ContentsPadding,
        SymlinkTargetTag,
        SymlinkTarget,
        DirectoryTag,
        EntryOpen,
        EntryNameTag,
        EntryName,
        EntryNodeTag,
        EntryClose,
        NodeClose,
        Done,
    }

    private readonly INarVisitor _visitor;
    private readonly NarLimits _limits;

    // The previous entry name of every open directory, innermost last; arrays are reused.
    private readonly List<byte[]> _previousNames = [];
    private readonly List<int> _previousNameLengths = [];
    private int _openDirectories;

    private State _state = State.Magic;

    // Partial token: the 8-byte length, then payload plus padding.
    private readonly byte[] _lengthBytes = new byte[8];
    private int _lengthFilled;
    private ulong _tokenLength;
    private byte[] _scratch;
    private int _scratchFilled;
    private long _tokenStart;

    // Partial zero padding after file contents.
    private readonly byte[] _paddingBytes = new byte[8];
    private int _paddingFilled;

    private bool _executable;
    private ulong _contentsSize;
    private ulong _contentsRemaining;

    public NarParser(INarVisitor visitor, NarLimits? limits = null)
    {
        _visitor = visitor ?? throw new ArgumentNullException(nameof(visitor));
        _limits = limits ?? NarLimits.Default;
        _scratch = new byte[64];
    }

    /// <summary>Bytes consumed so far.</summary>
    public long Position { get; private set; }

    /// <summary>Whether the whole archive has been read.</summary>
    public bool IsComplete => _state == State.Done;

    /// <summary>
    /// Parses as much of <paramref name="data"/> as belongs to the archive and returns the number of bytes
    /// consumed: all of it unless the archive ended inside this chunk.
    /// </summary>
    /// <exception cref="NarException">The archive is malformed or exceeds a limit.</exception>
    public int Feed(ReadOnlySpan<byte> data)
    {
        var input = data;
        while (!input.IsEmpty && _state != State.Done)
        {
            Step(ref input);
        }

        return data.Length - input.Length;
    }

    /// <summary>Declares the end of the input.</summary>
    /// <exception cref="NarException">The archive is incomplete.</exception>
    public void Finish()
    {
        if (_state != State.Done)
        {
            throw new NarException(NarError.Truncated, "unexpected end of archive", Position);
        }
    }

    private void Step(scoped ref ReadOnlySpan<byte> input)
    {
        ReadOnlySpan<byte> token;
        switch (_state)
        {
            case State.Magic:
                if (TryReadMagic(ref input))
                {
                    _state = State.NodeOpen;
                }

                return;

            case State.NodeOpen:
                if (TryExpectTag(ref input, "("u8))
                {
                    _state = State.TypeTag;
                }

                return;

            case State.TypeTag:
                if (TryExpectTag(ref input, "type"u8))
                {
                    _state = State.Type;
                }

                return;

            case State.Type:
                if (!TryReadString(ref input, _limits.MaxTagLength, out token))
                {
                    return;
                }

                if (token.SequenceEqual("regular"u8))
                {
                    _executable = false;
                    _state = State.RegularTag;
                }
                else if (token.SequenceEqual("directory"u8))
                {
                    OpenDirectory();
                    _visitor.Directory();
                    _state = State.DirectoryTag;
                }
                else if (token.SequenceEqual("symlink"u8))
                {
                    _state = State.SymlinkTargetTag;
                }
                else
                {
                    throw Error(NarError.UnknownType, $"unknown file type '{Printable(token)}'");
                }

                return;

            case State.RegularTag:
                if (!TryReadString(ref input, _limits.MaxTagLength, out token))
                {
                    return;
                }

                if (token.SequenceEqual("executable"u8))
                {
                    _executable = true;
                    _state = State.ExecutableValue;
                }
                else if (token.SequenceEqual("contents"u8))
                {
                    _state = State.ContentsSize;
                }
                else
                {
                    throw Error(NarError.UnexpectedToken, $"expected tag 'contents', got '{Printable(token)}'");
                }

                return;

            case State.ExecutableValue:
                if (TryReadExecutableMarker(ref input))
                {
                    _state = State.ContentsTag;
                }

                return;

            case State.ContentsTag:
                if (TryExpectTag(ref input, "contents"u8))
                {
                    _state = State.ContentsSize;
                }

                return;

            case State.ContentsSize:
                if (!TryReadU64(ref input, out var size))
                {
                    return;
                }

                if (size > long.MaxValue)
                {
                    throw Error(NarError.UnexpectedToken, $"file size {size} is too large");
                }

                _contentsSize = _contentsRemaining = size;
                _visitor.RegularFile(_executable, (long)size, Position);
                _state = size == 0 ? State.ContentsPadding : State.ContentsData;
                return;

            case State.ContentsData:
                {
                    var take = (int)Math.Min(_contentsRemaining, (ulong)input.Length);
                    _visitor.Contents(input[..take]);
                    Advance(ref input, take);
                    _contentsRemaining -= (ulong)take;
                    if (_contentsRemaining == 0)
                    {
                        _state = State.ContentsPadding;
                    }

                    return;
                }

            case State.ContentsPadding:
                if (TryReadPadding(ref input, _contentsSize))
                {
                    _visitor.EndRegularFile();
                    _state = State.NodeClose;
                }

                return;

            case State.SymlinkTargetTag:
                if (TryExpectTag(ref input, "target"u8))
                {
                    _state = State.SymlinkTarget;
                }

                return;

            case State.SymlinkTarget:
                if (!TryReadString(ref input, _limits.MaxTargetLength, out token))
                {
                    return;
                }

                if (token.IsEmpty || token.Contains((byte)0))
                {
                    throw Error(NarError.InvalidSymlinkTarget, "NAR contains invalid symlink target");
                }

                _visitor.Symlink(token);
                _state = State.NodeClose;
                return;

            case State.DirectoryTag:
                if (!TryReadString(ref input, _limits.MaxTagLength, out token))
                {
                    return;
                }

                if (token.SequenceEqual(")"u8))
                {
                    _openDirectories--;
                    _visitor.EndDirectory();
                    NodeFinished();
                }
                else if (token.SequenceEqual("entry"u8))
                {
                    _state = State.EntryOpen;
                }
                else
                {
                    throw Error(NarError.UnexpectedToken, $"expected tag 'entry' or ')', got '{Printable(token)}'");
                }

                return;

            case State.EntryOpen:
                if (TryExpectTag(ref input, "("u8))
                {
                    _state = State.EntryNameTag;
                }

                return;

            case State.EntryNameTag:
                if (TryExpectTag(ref input, "name"u8))
                {
                    _state = State.EntryName;
                }

                return;

            case State.EntryName:
                if (!TryReadString(ref input, _limits.MaxNameLength, out token))
                {
                    return;
                }

                CheckEntryName(token);
                _visitor.Entry(token);
                _state = State.EntryNodeTag;
                return;

            case State.EntryNodeTag:
                if (TryExpectTag(ref input, "node"u8))
                {
                    // The child's depth is the number of directories around it; the root is depth 0.
                    if (_openDirectories >= _limits.MaxDepth)
                    {
                        throw Error(NarError.TooDeep, $"NAR directory nesting exceeds maximum depth of {_limits.MaxDepth}");
                    }

                    _state = State.NodeOpen;
                }

                return;

            case State.EntryClose:
                if (TryExpectTag(ref input, ")"u8))
                {
                    _visitor.EndEntry();
                    _state = State.DirectoryTag;
                }

                return;

            case State.NodeClose:
                if (TryExpectTag(ref input, ")"u8))
                {
                    NodeFinished();
                }

                return;

            default:
                throw new InvalidOperationException($"unexpected parser state {_state}");
        }
    }

    private void NodeFinished() => _state = _openDirectories == 0 ? State.Done : State.EntryClose;

    private void OpenDirectory()
    {
        if (_previousNames.Count == _openDirectories)
        {
            _previousNames.Add(new byte[_limits.MaxNameLength]);
            _previousNameLengths.Add(0);
        }

        _previousNameLengths[_openDirectories] = -1; // no entry yet
        _openDirectories++;
    }

    private void CheckEntryName(ReadOnlySpan<byte> name)
    {
        if (name.IsEmpty || name.SequenceEqual("."u8) || name.SequenceEqual(".."u8) ||
            name.Contains((byte)'/') || name.Contains((byte)0))
        {
            throw Error(NarError.InvalidName, $"NAR contains invalid file name '{Printable(name)}'");
        }

        var index = _openDirectories - 1;
        var previousLength = _previousNameLengths[index];
        if (previousLength >= 0)
        {
            var order = name.SequenceCompareTo(_previousNames[index].AsSpan(0, previousLength));
            if (order == 0)
            {
                throw Error(NarError.DuplicateEntry, $"NAR directory contains '{Printable(name)}' twice");
            }

            if (order < 0)
            {
                throw Error(NarError.UnsortedEntries, $"NAR directory is not sorted ('{Printable(name)}' follows a later name)");
            }
        }

        name.CopyTo(_previousNames[index]);
        _previousNameLengths[index] = name.Length;
    }

    private bool TryReadMagic(scoped ref ReadOnlySpan<byte> input)
    {
        ReadOnlySpan<byte> token;
        try
        {
            if (!TryReadString(ref input, Magic.Length, out token))
            {
                return false;
            }
        }
        catch (NarException)
        {
            // Like Nix: anything wrong with the first token means this is not an archive at all.
            throw Error(NarError.NotAnArchive, "input doesn't look like a Nix archive");
        }

        if (!token.SequenceEqual(Magic))
        {
            throw Error(NarError.NotAnArchive, "input doesn't look like a Nix archive");
        }

        return true;
    }

    private bool TryExpectTag(scoped ref ReadOnlySpan<byte> input, ReadOnlySpan<byte> expected)
    {
        if (!TryReadString(ref input, _limits.MaxTagLength, out var token))
        {
            return false;
        }

        if (!token.SequenceEqual(expected))
        {
            throw Error(NarError.UnexpectedToken, $"expected tag '{Encoding.ASCII.GetString(expected)}', got '{Printable(token)}'");
        }

        return true;
    }

    private bool TryReadExecutableMarker(scoped ref ReadOnlySpan<byte> input)
    {
        try
        {
            return TryReadString(ref input, 0, out _);
        }
        catch (NarException e) when (e.Error == NarError.StringTooLong)
        {
            throw Error(NarError.NonEmptyExecutableMarker, "executable marker has non-empty value");
        }
    }

    // Reads one padded string of at most maxLength bytes. Returns false (having consumed all input)
    // when the token continues in a later chunk. The value is valid until the next read.
    private bool TryReadString(scoped ref ReadOnlySpan<byte> input, int maxLength, out ReadOnlySpan<byte> value)
    {
        value = default;
        if (_lengthFilled == 0)
        {
            _tokenStart = Position;

            // Fast path: the whole token is in this chunk.
            if (input.Length >= 8)
            {
                var length = BinaryPrimitives.ReadUInt64LittleEndian(input);
                CheckLength(length, maxLength);
                var padded = Padded((int)length);
                if (input.Length >= 8 + padded)
                {
                    CheckPadding(input.Slice(8 + (int)length, padded - (int)length));
                    value = input.Slice(8, (int)length);
                    Advance(ref input, 8 + padded);
                    return true;
                }
            }
        }

        // Slow path: gather the length, then the payload and padding, in the scratch buffer.
        if (_lengthFilled < 8)
        {
            var take = Math.Min(8 - _lengthFilled, input.Length);
            input[..take].CopyTo(_lengthBytes.AsSpan(_lengthFilled));
            _lengthFilled += take;
            Advance(ref input, take);
            if (_lengthFilled < 8)
            {
                return false;
            }

            _tokenLength = BinaryPrimitives.ReadUInt64LittleEndian(_lengthBytes);
            CheckLength(_tokenLength, maxLength);
            _scratchFilled = 0;
            var needed = Padded((int)_tokenLength);
            if (_scratch.Length < needed)
            {
                _scratch = new byte[Math.Max(needed, _scratch.Length * 2)];
            }
        }

        var total = Padded((int)_tokenLength);
        var copy = Math.Min(total - _scratchFilled, input.Length);
        input[..copy].CopyTo(_scratch.AsSpan(_scratchFilled));
        _scratchFilled += copy;
        Advance(ref input, copy);
        if (_scratchFilled < total)
        {
            return false;
        }

        _lengthFilled = 0;
        _scratchFilled = 0;
        CheckPadding(_scratch.AsSpan((int)_tokenLength, total - (int)_tokenLength));
        value = _scratch.AsSpan(0, (int)_tokenLength);
        return true;
    }

    private bool TryReadU64(scoped ref ReadOnlySpan<byte> input, out ulong value)
    {
        value = 0;
        if (_lengthFilled == 0)
        {
            _tokenStart = Position;
        }

        if (_lengthFilled == 0 && input.Length >= 8)
        {
            value = BinaryPrimitives.ReadUInt64LittleEndian(input);
            Advance(ref input, 8);
            return true;
        }

        var take = Math.Min(8 - _lengthFilled, input.Length);
        input[..take].CopyTo(_lengthBytes.AsSpan(_lengthFilled));
        _lengthFilled += take;
        Advance(ref input, take);
        if (_lengthFilled < 8)
        {
            return false;
        }

        _lengthFilled = 0;
        value = BinaryPrimitives.ReadUInt64LittleEndian(_lengthBytes);
        return true;
    }

    // Reads the zero padding after `size` bytes of contents.
    private bool TryReadPadding(scoped ref ReadOnlySpan<byte> input, ulong size)
    {
        var padding = (int)((8 - (size % 8)) % 8);
        if (_paddingFilled == 0)
        {
            _tokenStart = Position;
        }

        var take = Math.Min(padding - _paddingFilled, input.Length);
        input[..take].CopyTo(_paddingBytes.AsSpan(_paddingFilled));
        _paddingFilled += take;
        Advance(ref input, take);
        if (_paddingFilled < padding)
        {
            return false;
        }

        _paddingFilled = 0;
        CheckPadding(_paddingBytes.AsSpan(0, padding));
        return true;
    }

    private void CheckLength(ulong length, int maxLength)
    {
        if (length > (ulong)maxLength)
        {
            throw Error(NarError.StringTooLong, $"string of {length} bytes is too long here (at most {maxLength})");
        }
    }

    private void CheckPadding(ReadOnlySpan<byte> padding)
    {
        if (padding.ContainsAnyExcept((byte)0))
        {
            throw Error(NarError.NonZeroPadding, "non-zero padding");
        }
    }

    private static int Padded(int length) => (length + 7) & ~7;

    private void Advance(scoped ref ReadOnlySpan<byte> input, int count)
    {
        input = input[count..];
        Position += count;
    }

    // Errors point at the start of the token that caused them.
    private NarException Error(NarError error, string message) => new(error, message, _tokenStart);

    /// <summary>Shows untrusted bytes safely in a message: printable ASCII as is, the rest as <c>\xNN</c>, at most 64 bytes.</summary>
    internal static string Printable(ReadOnlySpan<byte> bytes)
    {
        var builder = new StringBuilder();
        foreach (var b in bytes[..Math.Min(bytes.Length, 64)])
        {
            if (b is >= 0x20 and < 0x7f and not (byte)'\\')
            {
                builder.Append((char)b);
            }
            else
            {
                builder.Append(System.Globalization.CultureInfo.InvariantCulture, $"\\x{b:x2}");
            }
        }

        if (bytes.Length > 64)
        {
            builder.Append('…');
        }

        return builder.ToString();
    }
}
