using System.Net;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// Addresses of this host that tests can listen on besides loopback, added by the test process (as root) and
/// removed when it exits: one in a private range that a test allows Kiln's fixed-output builds to
/// reach, one in a private range it does not, and one link-local (as a cloud's metadata service is). They are added
/// to the loopback interface (every kernel has it; not every one has dummy interfaces), so each is a real listener
/// the host itself reaches and only Kiln's isolation can stop a build from reaching it.
/// </summary>
public static class TestAddresses
{
    private static readonly Lazy<(IPAddress Allowed, IPAddress Private, IPAddress LinkLocal)> Created = new(Create);

    public static IPAddress Allowed => Created.Value.Allowed;

    public static IPAddress Private => Created.Value.Private;

    public static IPAddress LinkLocal => Created.Value.LinkLocal;

    private static (IPAddress, IPAddress, IPAddress) Create()
    {
        // Per test process, so two runs on one machine do not collide; never 169.254.169.254 itself, which the host
        // may need for its own metadata.
        var n = (Environment.ProcessId % 200) + 20;
        var addresses = (IPAddress.Parse($"10.254.{n}.1"), IPAddress.Parse($"10.254.{n}.2"), IPAddress.Parse($"169.254.{n}.7"));
        var all = new[] { addresses.Item1, addresses.Item2, addresses.Item3 };
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var address in all)
            {
                Processes.Run("ip", ["addr", "del", $"{address}/32", "dev", "lo"]);
            }
        };
        foreach (var address in all)
        {
            var added = Processes.Run("ip", ["addr", "replace", $"{address}/32", "dev", "lo"]);
            Assert.True(added.ExitCode == 0, $"cannot make the test's addresses (root is needed): {added.Stderr}");
        }

        return addresses;
    }
}
