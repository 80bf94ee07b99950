namespace Kiln.Protocol;

/// <summary>
/// The kinds of failure Kiln reports to whoever asked, whatever the front door. Each is mapped in one place per
/// front door: to a Nix error frame by the protocol sessions (the session goes on), to an HTTP status by the HTTP
/// front — the binary cache and the agent gateway alike (<see cref="ErrorKinds.HttpStatus"/>), to an <c>error: …</c>
/// line by the shell and the CLI.
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

/// <summary>
/// Failures of Kiln's own storage (a full or read-only disk, a quota, an I/O error) that arrive as <see cref="IOException"/>,
/// like a broken connection does: a session must report them to its client, not end as if the client had gone.
/// </summary>
public static class StorageFailure
{
    // errno values the runtime puts in IOException.HResult on Linux: ENOSPC, EDQUOT, EROFS, EIO.
    private const int NoSpace = 28, QuotaExceeded = 122, ReadOnly = 30, InputOutput = 5;

    /// <summary>What to tell a client (no server path in it), or null when <paramref name="e"/> is not a storage failure.</summary>
    public static string? Describe(Exception e) => e is IOException io && e.GetType() == typeof(IOException) ? io.HResult switch
    {
        NoSpace or QuotaExceeded => "Kiln's storage is full (no space left on device); the operator has been told, try again later",
        ReadOnly => "Kiln's storage is read-only; the operator has been told, try again later",
        InputOutput => "Kiln's storage failed (I/O error); the operator has been told",
        _ => null,
    } : null;
}

/// <summary>The one mapping from Kiln's error kinds to HTTP statuses, for every HTTP front (cache and agent gateway).</summary>
public static class ErrorKinds
{
    public static int HttpStatus(ErrorKind kind) => kind switch
    {
        ErrorKind.Invalid => 400,
        ErrorKind.NotFound => 404,
        ErrorKind.Forbidden => 403,
        ErrorKind.Conflict => 409,
        ErrorKind.TooLarge => 413,
        ErrorKind.Unavailable => 503,
        _ => 500,
    };
}
