using System.Net;
using System.Net.Sockets;

namespace Kiln.Nix.Tests.Support;

/// <summary>Ports for the servers tests start on loopback.</summary>
public static class TestPorts
{
    /// <summary>A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice, let go at once).</summary>
    public static int Free()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
