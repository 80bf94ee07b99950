namespace Kiln.Server;

/// <summary>How <c>kiln serve</c> runs.</summary>
public sealed record ServerOptions
{
    /// <summary>The data directory: metadata, blobs, the daemon socket.</summary>
    public required string DataDirectory { get; init; }

    /// <summary>The worker-protocol socket; default <c>DATA/daemon.sock</c>.</summary>
    public string? SocketPath { get; init; }

    /// <summary>The account every client of the unix socket acts as.</summary>
    public string SocketAccount { get; init; } = "local";

    /// <summary>Permissions of the socket file: who may connect, and so act as <see cref="SocketAccount"/>.</summary>
    public UnixFileMode SocketMode { get; init; } = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>How long running sessions get to finish when the server stops.</summary>
    public TimeSpan ShutdownGrace { get; init; } = TimeSpan.FromSeconds(5);

    public string EffectiveSocketPath => SocketPath ?? Path.Combine(DataDirectory, "daemon.sock");
}
