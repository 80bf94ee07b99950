namespace Kiln.Protocol;

/// <summary>
/// A protocol-level failure the client should hear about as a Nix error (<c>error: …</c>): a request the session
/// itself refuses. The session reports it and goes on to the next request. (The store and the scheduler report
/// through <see cref="KilnException"/> with a kind.)
/// </summary>
public class NixErrorException : KilnException
{
    public NixErrorException(string message, int status = 1) : base(ErrorKind.Invalid, message, status)
    {
    }

    public NixErrorException(string message, Exception inner, int status = 1) : base(ErrorKind.Invalid, message, inner, status)
    {
    }

    /// <summary>The exit status Nix attaches.</summary>
    public int Status => NixStatus;
}

/// <summary>The connection broke the protocol or ended mid-message; the session closes with this reason.</summary>
public sealed class ProtocolViolationException(string message) : Exception(message);
