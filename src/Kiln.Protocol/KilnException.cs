namespace Kiln.Protocol;

/// <summary>
/// The kinds of failure Kiln reports to whoever asked, whatever the front door. Each is mapped in one place per
/// front door: to a Nix error frame by the protocol sessions (the session goes on), to an HTTP status by the HTTP
/// front (<c>Kiln.Http.Errors</c>), to an <c>error: …</c> line by the shell and the CLI.
/// </summary>
public enum ErrorKind
{
    /// <summary>The request is wrong (a malformed value, a hash that does not match): 400.</summary>
    Invalid,

    /// <summary>What was asked for is not there, or not visible to the caller (the same answer): 404.</summary>
    NotFound,

    /// <summary>The caller may not do this (a permission its key or token lacks): 403.</summary>
    Forbidden,

    /// <summary>The store's state forbids it now (a live path, a missing first step): 409.</summary>
    Conflict,

    /// <summary>Beyond a size limit: 413.</summary>
    TooLarge,

    /// <summary>Kiln cannot do it right now (a dependency is down): 503.</summary>
    Unavailable,

    /// <summary>Kiln failed (its store is damaged, say): 500, and the operator should look.</summary>
    Failed,
}

/// <summary>A failure the caller should hear about, with its kind; <see cref="NixStatus"/> is the exit status Nix attaches (1, or 100 for builds).</summary>
public class KilnException : Exception
{
    public KilnException(ErrorKind kind, string message, int nixStatus = 1) : base(message)
    {
        Kind = kind;
        NixStatus = nixStatus;
    }

    public KilnException(ErrorKind kind, string message, Exception inner, int nixStatus = 1) : base(message, inner)
    {
        Kind = kind;
        NixStatus = nixStatus;
    }

    public ErrorKind Kind { get; }

    public int NixStatus { get; }
}
