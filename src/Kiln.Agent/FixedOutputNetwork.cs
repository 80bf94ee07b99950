using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text;

namespace Kiln.Agent;

/// <summary>What network fixed-output builds (and <c>builtin:fetchurl</c>) get.</summary>
public sealed record FixedOutputNetworkOptions
{
    /// <summary>
    /// True (the default): a network namespace of their own, reaching out through user-mode networking
    /// (slirp4netns) with the host's loopback, its own addresses, link-local (cloud metadata) and private ranges
    /// unreachable. False: the host's network, as stock Nix gives them — on a shared host that reaches Kiln's own
    /// ports and whatever the host can.
    /// </summary>
    public bool Isolated { get; init; } = true;

    /// <summary>Ranges an isolated build may reach although they are private or the host's (an internal mirror, say).</summary>
    public IReadOnlyList<IPNetwork> Allowed { get; init; } = [];

    public string Slirp4netns { get; init; } = "/usr/bin/slirp4netns";

    public string Nsenter { get; init; } = "/usr/bin/nsenter";

    public string Ip { get; init; } = File.Exists("/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip";
}

/// <summary>
/// Gives an isolated fixed-output build its network: the sandbox is started in a network namespace of its own and
/// blocked before it runs anything; Kiln attaches slirp4netns to that namespace (a tap device whose packets become
/// ordinary sockets of the host, so the build never shares the host's interfaces, loopback or abstract unix
/// sockets), adds routes that refuse every range the build must not reach, then lets the build go. The build's
/// user has no capability over that namespace, so it cannot remove the routes.
/// </summary>
internal static class FixedOutputNetwork
{
    /// <summary>Where the build finds a resolver: slirp4netns forwards it to the host's.</summary>
    public const string ResolvConf = "nameserver 10.0.2.3\n";

    // slirp4netns's own network (the build's address, its gateway and its DNS forwarder); more specific than the
    // private 10.0.0.0/8 refused below, so it stays reachable.
    private const string Gateway = "10.0.2.2";

    /// <summary>What an isolated build cannot reach unless allowed: loopback-like, private, link-local, shared and reserved ranges.</summary>
    public static readonly IReadOnlyList<IPNetwork> Refused =
    [
        IPNetwork.Parse("0.0.0.0/8"),
        IPNetwork.Parse("10.0.0.0/8"),
        IPNetwork.Parse("100.64.0.0/10"),
        IPNetwork.Parse("127.0.0.0/8"),
        IPNetwork.Parse("169.254.0.0/16"),
        IPNetwork.Parse("172.16.0.0/12"),
        IPNetwork.Parse("192.0.0.0/24"),
        IPNetwork.Parse("192.168.0.0/16"),
        IPNetwork.Parse("198.18.0.0/15"),
        IPNetwork.Parse("224.0.0.0/4"),
        IPNetwork.Parse("240.0.0.0/4"),
    ];

    /// <summary>
    /// The <c>ip -batch</c> commands for the build's namespace: refuse every range above and each of the host's own
    /// addresses and networks (they may be public, and Kiln listens on them), then route what the operator allowed through the
    /// gateway. Longest prefix wins, and an allowed range equal to a refused one replaces it.
    /// </summary>
    public static string RouteCommands(IEnumerable<IPNetwork> hostNetworks, IEnumerable<IPNetwork> allowed)
    {
        var text = new StringBuilder();
        var refused = Refused.Concat(hostNetworks.Where(n => n.BaseAddress.AddressFamily == AddressFamily.InterNetwork && n.PrefixLength > 0));
        foreach (var range in refused.Distinct())
        {
            text.Append(CultureInfo.InvariantCulture, $"route replace prohibit {range}\n");
        }

        foreach (var range in allowed.Where(r => r.BaseAddress.AddressFamily == AddressFamily.InterNetwork))
        {
            text.Append(CultureInfo.InvariantCulture, $"route replace {range} via {Gateway} dev tap0\n");
        }

        return text.ToString();
    }

    /// <summary>
    /// The host's own IPv4 addresses and the networks they are on, now (interfaces come and go): the host's neighbours
    /// (a management controller on a public subnet, say) are as internal as its own ports.
    /// </summary>
    public static IEnumerable<IPNetwork> HostNetworks() =>
        NetworkInterface.GetAllNetworkInterfaces().SelectMany(i => i.GetIPProperties().UnicastAddresses)
            .Where(a => a.Address.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a.Address))
            .SelectMany(a => new[] { new IPNetwork(a.Address, 32), OnLink(a.Address, a.PrefixLength) });

    private static IPNetwork OnLink(IPAddress address, int prefixLength)
    {
        var bytes = address.GetAddressBytes();
        var mask = prefixLength == 0 ? 0u : uint.MaxValue << (32 - prefixLength);
        var value = System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(bytes) & mask;
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return new IPNetwork(new IPAddress(bytes), prefixLength);
    }

    /// <summary>
    /// Whether slirp4netns can run as the build's user: it opens <c>/dev/net/tun</c> after joining the build's
    /// namespaces, where only the file's mode lets it in (0666 on stock Debian; some hosts and containers have 0600).
    /// </summary>
    public static bool TunOpenToAll() =>
        File.Exists("/dev/net/tun") && (File.GetUnixFileMode("/dev/net/tun") & (UnixFileMode.OtherRead | UnixFileMode.OtherWrite)) == (UnixFileMode.OtherRead | UnixFileMode.OtherWrite);

    /// <summary>
    /// Attaches the network to the namespace of <paramref name="childPid"/> (the sandbox's first process, blocked
    /// until Kiln lets it go) and returns slirp4netns, to be disposed when the build ends. slirp4netns runs in the
    /// build's cgroup with its system calls filtered (<c>--enable-seccomp</c>), as the build's user when
    /// <c>/dev/net/tun</c> allows, else as root in a mount namespace of its own with every capability but binding low
    /// ports dropped (<c>--enable-sandbox</c>), and exits by itself if Kiln dies (its <c>--exit-fd</c> is a pipe only
    /// Kiln writes to).
    /// </summary>
    public static async Task<IDisposable> AttachAsync(FixedOutputNetworkOptions options, int childPid, string directory, IReadOnlyList<string> cgroupProcs,
        (int UserId, int GroupId)? user, string setpriv, CancellationToken cancellationToken)
    {
        // The namespaces are opened once, now, and named by Kiln's descriptors from here on: if the sandbox died and
        // its PID went to another process, nothing below must touch that process's (the host's) network.
        using var network = NamespaceHandle.Open($"/proc/{childPid}/ns/net");
        if (Native.ReadLink(network.Path) == Native.ReadLink("/proc/self/ns/net"))
        {
            throw new IOException("the sandbox is gone (its process has the host's network)");
        }

        // bubblewrap nests the builder's user namespace in the one that owns the network namespace (it needs root in
        // the outer one to mount devpts); slirp4netns must join the owner, which no process is in by then, so Kiln
        // hands it the parent of the builder's.
        using var owner = NamespaceHandle.OwnerOfNetwork(childPid);
        var ready = Path.Combine(directory, "network-ready");
        var exit = Path.Combine(directory, "network-exit");
        Native.MakeFifo(exit);
        var exitWriter = Native.OpenReadWrite(exit);
        var start = new ProcessStartInfo("/bin/sh") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        start.ArgumentList.Add("-c");
        // The shell (root) opens what slirp4netns needs as descriptors 3–6, then becomes it (as the build user if it can).
        start.ArgumentList.Add("""
            for f in $1; do echo $$ > "$f" || exit 125; done; ready=$2; exit=$3; userns=$4; netns=$5; shift 5
            exec "$@" 3>"$ready" 4<"$exit" 5<"$userns" 6<"$netns" </dev/null
            """);
        start.ArgumentList.Add("kiln-network");
        start.ArgumentList.Add(string.Join(' ', cgroupProcs));
        start.ArgumentList.Add(ready);
        start.ArgumentList.Add(exit);
        start.ArgumentList.Add(owner.Path);
        start.ArgumentList.Add(network.Path);
        var unprivileged = user is not null && TunOpenToAll();
        if (unprivileged && user is { } u)
        {
            foreach (var argument in new[] { setpriv, "--reuid", u.UserId.ToString(CultureInfo.InvariantCulture), "--regid", u.GroupId.ToString(CultureInfo.InvariantCulture), "--clear-groups", "--no-new-privs", "--" })
            {
                start.ArgumentList.Add(argument);
            }
        }

        // Its --enable-sandbox (a mount namespace of its own, capabilities dropped) is for root: as the build user the
        // packet loop already runs without any capability, in the host's namespaces only as that user.
        string[] sandbox = unprivileged ? ["--enable-seccomp"] : ["--enable-sandbox", "--enable-seccomp"];
        foreach (var argument in (string[])
        [
            options.Slirp4netns, "--configure", "--mtu=65520", "--disable-host-loopback", .. sandbox,
            "--exit-fd=4", "--ready-fd=3", "--userns-path=/proc/self/fd/5", "--netns-type=path", "/proc/self/fd/6", "tap0",
        ])
        {
            start.ArgumentList.Add(argument);
        }

        start.Environment.Clear();
        start.Environment["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin";
        var slirp = new Slirp(Process.Start(start) ?? throw new IOException("cannot start slirp4netns"), exitWriter);
        try
        {
            var deadline = Stopwatch.StartNew();
            while (!(File.Exists(ready) && new FileInfo(ready).Length > 0))
            {
                if (slirp.Process.HasExited)
                {
                    throw new IOException($"slirp4netns failed: {slirp.Errors()}");
                }

                if (deadline.Elapsed > TimeSpan.FromSeconds(30))
                {
                    throw new IOException("slirp4netns did not configure the network within 30 seconds");
                }

                await Task.Delay(2, cancellationToken).ConfigureAwait(false);
            }

            var routes = new ProcessStartInfo(options.Nsenter) { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardError = true };
            // Root (whom every namespace lets in) enters the network namespace only; Kiln's own user must enter its owner first.
            string[] enter = Environment.IsPrivilegedProcess ? [] : [$"--user={owner.Path}", "--preserve-credentials"];
            foreach (var argument in enter.Concat([$"--net={network.Path}", "--", options.Ip, "-batch", "-"]))
            {
                routes.ArgumentList.Add(argument);
            }

            using var ip = Process.Start(routes) ?? throw new IOException("cannot start nsenter");
            try
            {
                await ip.StandardInput.WriteAsync(RouteCommands(HostNetworks(), options.Allowed)).ConfigureAwait(false);
                ip.StandardInput.Close();
                var errors = await ip.StandardError.ReadToEndAsync(cancellationToken).ConfigureAwait(false);
                await ip.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
                if (ip.ExitCode != 0)
                {
                    throw new IOException($"cannot set the build's routes: {errors.Trim()}");
                }
            }
            catch (OperationCanceledException)
            {
                ip.Kill();
                throw;
            }

            return slirp;
        }
        catch
        {
            slirp.Dispose();
            throw;
        }
    }

    private sealed class Slirp : IDisposable
    {
        private readonly Task<string> _errors;
        private readonly int _exitWriter;

        public Slirp(Process process, int exitWriter)
        {
            Process = process;
            _exitWriter = exitWriter;
            _ = process.StandardOutput.BaseStream.CopyToAsync(Stream.Null);
            _errors = ReadBoundedAsync(process.StandardError.BaseStream);
        }

        public Process Process { get; }

        public string Errors() => _errors.Wait(TimeSpan.FromSeconds(1)) ? _errors.Result.Trim() : "";

        // The first 4 KiB of what it says; the rest is read and dropped, so a chatty slirp4netns never fills memory or disk.
        private static async Task<string> ReadBoundedAsync(Stream stream)
        {
            var kept = new MemoryStream();
            var buffer = new byte[4096];
            int read;
            while ((read = await stream.ReadAsync(buffer).ConfigureAwait(false)) > 0)
            {
                kept.Write(buffer, 0, (int)Math.Min(read, Math.Max(0, 4096 - kept.Length)));
            }

            return Encoding.UTF8.GetString(kept.ToArray());
        }

        public void Dispose()
        {
            Native.Close(_exitWriter); // slirp4netns exits when its exit pipe has no writer left
            try
            {
                Process.Kill();
                Process.WaitForExit(5000);
            }
            catch (InvalidOperationException)
            {
            }

            Process.Dispose();
        }
    }

    /// <summary>An open user namespace, named by a path other processes of Kiln's user (or root) can open.</summary>
    private sealed class NamespaceHandle : IDisposable
    {
        private readonly int _fd;

        private NamespaceHandle(int fd) => _fd = fd;

        public string Path => $"/proc/{Environment.ProcessId}/fd/{_fd}";

        public static NamespaceHandle Open(string path) => new(Native.OpenReadOnly(path));

        public static NamespaceHandle OwnerOfNetwork(int pid)
        {
            var user = Native.OpenReadOnly($"/proc/{pid}/ns/user");
            var parent = -1;
            try
            {
                // The owner of the network namespace is the builder's user namespace's parent when bubblewrap nested
                // one (it does with --dev), else the builder's own.
                parent = Native.NamespaceParent(user);
                if (parent >= 0 && Native.ReadLink($"/proc/self/fd/{parent}") != Native.ReadLink("/proc/self/ns/user"))
                {
                    Native.Close(user);
                    return new NamespaceHandle(parent);
                }

                if (parent >= 0)
                {
                    Native.Close(parent);
                }

                return new NamespaceHandle(user);
            }
            catch
            {
                Native.Close(user);
                if (parent >= 0)
                {
                    Native.Close(parent);
                }

                throw;
            }
        }

        public void Dispose() => Native.Close(_fd);
    }
}
