using Kiln.Nix.Wire;

namespace Kiln.Protocol.Worker;

/// <summary>What the daemon tells a client about its trust in it (worker ≥ 1.35).</summary>
public enum ClientTrust : ulong
{
    Unknown = 0,
    Trusted = 1,
    NotTrusted = 2,
}

/// <summary>How a worker-protocol session behaves.</summary>
public sealed record WorkerSessionOptions
{
    /// <summary>The version Kiln advertises: 1.38 with an empty feature list.</summary>
    public ProtocolVersion ServerVersion { get; init; } = new(1, 38);

    /// <summary>The oldest negotiated version served: 1.21 is Nix 2.3.</summary>
    public ProtocolVersion MinimumVersion { get; init; } = new(1, 21);

    /// <summary>Shown by <c>nix store info</c> (worker ≥ 1.33).</summary>
    public string DaemonVersion { get; init; } = "Kiln 0.1.0";

    /// <summary>
    /// Reported at ≥ 1.35. Kiln never grants Nix's "trusted user" powers (it never trusts a client's claims about
    /// input-addressed outputs), so it says so; newer remote builders then send whole derivation closures.
    /// </summary>
    public ClientTrust Trust { get; init; } = ClientTrust.NotTrusted;

    /// <summary>Limits on strings, lists and frames in requests.</summary>
    public WireLimits Limits { get; init; } = WireLimits.Default;

    /// <summary>Largest AddTextToStore text and flat upload Kiln buffers to compute a path.</summary>
    public int MaxTextSize { get; init; } = 64 << 20;

    /// <summary>
    /// Why this session may not change the store (add paths, roots, signatures, logs; collect garbage), or null if
    /// it may: a key without <c>store:write</c>. Such a request is refused with this message and ends the session.
    /// </summary>
    public string? UploadsDenied { get; init; }

    /// <summary>Why this session may not build (BuildPaths, BuildDerivation, EnsurePath), or null if it may.</summary>
    public string? BuildsDenied { get; init; }

    /// <summary>
    /// Whether AddSignatures is taken (the socket's owner). Like Nix's daemon for clients it does not trust, Kiln refuses
    /// it from tenants' logins: a signature a client attaches vouches for nothing Kiln checked.
    /// </summary>
    public bool SignaturesAllowed { get; init; } = true;
}

/// <summary>How a session went, for the server's one log line per session.</summary>
public sealed record SessionSummary(ProtocolVersion? ClientVersion, int Operations, long BytesIn, long BytesOut, string? CloseReason)
{
    /// <summary>The close reason of a session the server stopped.</summary>
    public const string Cancelled = "server shutting down";

    /// <summary>The close reason of a session whose client went away while a request was being worked on.</summary>
    public const string ClientGone = "client disconnected during a request (its work was cancelled)";
}
