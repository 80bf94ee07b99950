using System.Buffers.Binary;
using System.Net.Sockets;

namespace Kiln.Server;

/// <summary>
/// Who is on the other end of a unix socket (SO_PEERCRED): process, user and group, as the kernel vouches. Also
/// where that process's file system root is, so paths it names (a GC root's symlink) can be resolved from here
/// even when it runs in a chroot.
/// </summary>
public sealed record PeerCredentials(int ProcessId, int UserId, int GroupId)
{
    private const int SolSocket = 1;
    private const int SoPeerCred = 17;

    public static PeerCredentials? Of(Socket socket)
    {
        ArgumentNullException.ThrowIfNull(socket);
        Span<byte> ucred = stackalloc byte[12];
        try
        {
            if (socket.GetRawSocketOption(SolSocket, SoPeerCred, ucred) != 12)
            {
                return null;
            }
        }
        catch (SocketException)
        {
            return null;
        }

        return new PeerCredentials(
            BinaryPrimitives.ReadInt32LittleEndian(ucred),
            BinaryPrimitives.ReadInt32LittleEndian(ucred[4..]),
            BinaryPrimitives.ReadInt32LittleEndian(ucred[8..]));
    }

    /// <summary>The peer's root directory as seen from here (<c>/proc/PID/root</c>), or null if it cannot be seen.</summary>
    public string? FileSystemRoot()
    {
        try
        {
            var target = new DirectoryInfo($"/proc/{ProcessId}/root").LinkTarget;
            return target is not null && target.StartsWith('/') ? target : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}
