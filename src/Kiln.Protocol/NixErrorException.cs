namespace Kiln.Protocol;

/// <summary>
/// A failure the client should hear about as a Nix error (<c>error: …</c>): a path that is not valid, an upload whose
/// hash does not match, an operation that is not allowed. The session reports it and goes on to the next request.
/// <see cref="Status"/> is the exit status Nix attaches (1 generally, 100 for build failures).
/// </summary>
public class NixErrorException : Exception
{
    public NixErrorException(string message, int status = 1) : base(message) => Status = status;

    public NixErrorException(string message, Exception inner, int status = 1) : base(message, inner) => Status = status;

    public int Status { get; }
}

/// <summary>The connection broke the protocol or ended mid-message; the session closes with this reason.</summary>
public sealed class ProtocolViolationException(string message) : Exception(message);
