using System.Net;
using System.Net.Sockets;

namespace Kiln.Push;

/// <summary>
/// The connections a push makes: to the addresses its host resolves to, minus — unless the operator allows them —
/// loopback, private, link-local and other non-public ones, checked on every connection (so a name that resolves
/// differently later, or a redirect, cannot reach them either). No proxy, no redirects.
/// </summary>
internal static class GuardedConnections
{
    public static SocketsHttpHandler Handler(bool allowPrivate) => new()
    {
        UseProxy = false,
        AllowAutoRedirect = false,
        UseCookies = false, // (one handler serves every account's targets: no cookie may pass between them)
        PooledConnectionLifetime = TimeSpan.FromMinutes(5),
        ConnectTimeout = TimeSpan.FromSeconds(30),
        ConnectCallback = async (context, cancellationToken) =>
        {
            var allowed = await AllowedAsync(context.DnsEndPoint.Host, allowPrivate, cancellationToken).ConfigureAwait(false);
            var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await socket.ConnectAsync(allowed, context.DnsEndPoint.Port, cancellationToken).ConfigureAwait(false);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        },
    };

    /// <summary>One address of <paramref name="host"/> a push may connect to (for ssh, which connects by itself).</summary>
    /// <exception cref="PushException">It has none.</exception>
    public static async Task<IPAddress> ResolveAsync(string host, bool allowPrivate, CancellationToken cancellationToken)
    {
        try
        {
            return (await AllowedAsync(host, allowPrivate, cancellationToken).ConfigureAwait(false))[0];
        }
        catch (Exception e) when (e is HttpRequestException or SocketException)
        {
            throw new PushException(e.Message, inner: e);
        }
    }

    private static async Task<IPAddress[]> AllowedAsync(string host, bool allowPrivate, CancellationToken cancellationToken)
    {
        var addresses = IPAddress.TryParse(host, out var literal) ? [literal] : await Dns.GetHostAddressesAsync(host, cancellationToken).ConfigureAwait(false);
        var allowed = addresses.Where(a => allowPrivate || IsPublic(a)).ToArray();
        return allowed.Length > 0 ? allowed : throw new HttpRequestException(addresses.Length == 0
            ? $"'{host}' has no address"
            : $"'{host}' is not a public address (the operator allows pushes to public addresses only)");
    }

    /// <summary>Whether an address is on the public internet (not loopback, private, link-local, shared, multicast or reserved).</summary>
    public static bool IsPublic(IPAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        if (IPAddress.IsLoopback(address) || address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any) || address.Equals(IPAddress.IPv6None))
        {
            return false;
        }

        if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            var b = address.GetAddressBytes();
            return !(b[0] is 0 or 10 or 127 || b[0] >= 224 // this network, private, loopback, multicast and reserved
                || (b[0] == 100 && b[1] is >= 64 and <= 127) // shared (carrier-grade NAT)
                || (b[0] == 169 && b[1] == 254) // link-local (cloud metadata services)
                || (b[0] == 172 && b[1] is >= 16 and <= 31)
                || (b[0] == 192 && b[1] == 168)
                || (b[0] == 192 && b[1] == 0 && b[2] is 0 or 2)
                || (b[0] == 198 && b[1] is 18 or 19));
        }

        var bytes = address.GetAddressBytes();
        // Addresses that carry an IPv4 one, which translators (NAT64, 6to4) may reach: that one decides.
        if (bytes.AsSpan(0, 12).SequenceEqual(new byte[] { 0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0 }))
        {
            return IsPublic(new IPAddress(bytes.AsSpan(12, 4)));
        }

        if (bytes[0] == 0x20 && bytes[1] == 0x02)
        {
            return IsPublic(new IPAddress(bytes.AsSpan(2, 4)));
        }

        if ((bytes[0] == 0 && bytes[1] == 0x64 && bytes[2] == 0xff && bytes[3] == 0x9b && bytes[4] == 0 && bytes[5] == 1) // local-use NAT64
            || bytes.AsSpan(0, 12).SequenceEqual(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0 })) // SIIT
        {
            return false;
        }

        return !(address.IsIPv6LinkLocal || address.IsIPv6SiteLocal || address.IsIPv6Multicast || address.IsIPv6UniqueLocal
            || address.IsIPv6Teredo || (bytes[0] == 0x20 && bytes[1] == 0x01 && bytes[2] == 0x0d && bytes[3] == 0xb8)
            || bytes.Take(12).All(x => x == 0)); // IPv4-compatible and the unspecified/loopback forms
    }
}
