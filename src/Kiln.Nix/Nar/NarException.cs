namespace Kiln.Nix.Nar;

/// <summary>Why a NAR was refused.</summary>
public enum NarError
{
    /// <summary>The archive does not start with the <c>nix-archive-1</c> magic.</summary>
    NotAnArchive,

    /// <summary>A token other than the one the grammar requires at this point.</summary>
    UnexpectedToken,

    /// <summary>A node type other than regular, directory or symlink.</summary>
    UnknownType,

    /// <summary>The <c>executable</c> marker is followed by a non-empty string.</summary>
    NonEmptyExecutableMarker,

    /// <summary>A string longer than the limit for its position (tag, name, target).</summary>
    StringTooLong,

    /// <summary>Padding after a string or file contents is not all zero.</summary>
    NonZeroPadding,

    /// <summary>An entry name that is empty, <c>.</c>, <c>..</c>, or contains <c>/</c> or NUL.</summary>
    InvalidName,

    /// <summary>Directory entries out of ascending byte order.</summary>
    UnsortedEntries,

    /// <summary>The same entry name twice in one directory.</summary>
    DuplicateEntry,

    /// <summary>A symlink target that is empty or contains NUL.</summary>
    InvalidSymlinkTarget,

    /// <summary>Directories nested deeper than <see cref="NarLimits.MaxDepth"/>.</summary>
    TooDeep,

    /// <summary>The input ended before the archive did.</summary>
    Truncated,

    /// <summary>Bytes follow the end of the archive.</summary>
    TrailingData,
}

/// <summary>A NAR that Kiln refuses, with the reason and the byte offset where it was found.</summary>
public sealed class NarException : NixFormatException
{
    public NarException(NarError error, string message, long position)
        : base($"bad archive: {message} (at byte {position})")
    {
        Error = error;
        Position = position;
    }

    /// <summary>The kind of problem.</summary>
    public NarError Error { get; }

    /// <summary>Offset into the archive where the problem was detected.</summary>
    public long Position { get; }
}

/// <summary>
/// Bounds the parser enforces before allocating anything. The defaults are Nix's own
/// (<c>src/libutil/archive.cc</c> on master: <c>narMaxDepth</c> 64, names 255 bytes, symlink targets 4095 bytes,
/// keywords 32 bytes), so a NAR Kiln accepts is one current Nix can unpack.
/// </summary>
public sealed record NarLimits
{
    /// <summary>The limits current Nix applies.</summary>
    public static NarLimits Default { get; } = new();

    /// <summary>Nodes may be nested at depths 0 … MaxDepth−1 (the root is depth 0).</summary>
    public int MaxDepth { get; init; } = 64;

    /// <summary>Longest entry name in bytes.</summary>
    public int MaxNameLength { get; init; } = 255;

    /// <summary>Longest symlink target in bytes.</summary>
    public int MaxTargetLength { get; init; } = 4095;

    /// <summary>Longest keyword token (<c>type</c>, <c>regular</c>, …) in bytes.</summary>
    public int MaxTagLength { get; init; } = 32;
}
