namespace Kiln.Nix;

/// <summary>
/// Base of every error Kiln.Nix raises for malformed input (a bad hash string, store path, NAR,
/// derivation, narinfo, key or wire message). Callers can catch this one type to turn any
/// format problem into a one-line message for the user or a Nix error frame for a client.
/// </summary>
public class NixFormatException : FormatException
{
    public NixFormatException(string message) : base(message) { }

    public NixFormatException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A hash string that does not parse, or has the wrong type or length (Nix's <c>BadHash</c>).</summary>
public sealed class BadHashException(string message) : NixFormatException(message);

/// <summary>A store path or store path name that Nix would refuse (Nix's <c>BadStorePath</c>).</summary>
public sealed class BadStorePathException(string message) : NixFormatException(message);
