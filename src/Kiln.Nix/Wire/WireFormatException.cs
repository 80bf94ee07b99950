namespace Kiln.Nix.Wire;

/// <summary>
/// A protocol message that breaks the wire grammar or a limit (bad padding, a boolean other than 0/1, an
/// over-long string or list, invalid UTF-8). The stream can no longer be trusted to be in sync: the session
/// that sees this should log the reason and close the connection.
/// </summary>
public sealed class WireFormatException(string message) : NixFormatException(message);

/// <summary>Limits enforced while reading, before anything is allocated.</summary>
public sealed record WireLimits
{
    /// <summary>The defaults Kiln's server uses.</summary>
    public static WireLimits Default { get; } = new();

    /// <summary>Longest string (bytes). Structured-attrs <c>__json</c> values can be large, so this is generous.</summary>
    public int MaxStringLength { get; init; } = 64 << 20;

    /// <summary>Most elements in a list, set or map.</summary>
    public int MaxListCount { get; init; } = 1 << 20;

    /// <summary>Largest chunk in a framed stream.</summary>
    public int MaxFrameLength { get; init; } = 16 << 20;
}
