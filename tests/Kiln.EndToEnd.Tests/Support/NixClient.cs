using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// A real Nix client of one version, living in a Debian chroot built by setup-clients.sh. Each command runs in a
/// private mount namespace (nothing leaks onto the host): /proc is mounted in the chroot, the directory holding
/// Kiln's socket is bind-mounted at /run/kiln and Kiln's unpacked store root at /run/kiln-root, so the client
/// reaches Kiln at <see cref="SocketUri"/> exactly as the README tells users to. The chroot's own /nix/store is never
/// used: tests give each client a store of its own with <c>local?root=…</c>.
/// </summary>
public sealed class NixClient
{
    private static readonly string Cache = Environment.GetEnvironmentVariable("KILN_TEST_CACHE") ?? "/var/cache/kiln-test";

    public static readonly IReadOnlyDictionary<string, string> Suites = new Dictionary<string, string>
    {
        ["2.3.7"] = "bullseye",
        ["2.8.0"] = "bookworm",
        ["2.26.3"] = "trixie",
        ["2.34.8"] = "sid",
    };

    public static TheoryData<string> Versions() => new(Suites.Keys);

    private NixClient(string version)
    {
        Version = version;
        Root = Path.Combine(Cache, Suites[version]);
    }

    public string Version { get; }

    /// <summary>The chroot on the host.</summary>
    public string Root { get; }

    public const string SocketUri = "unix:///run/kiln/daemon.sock?root=/run/kiln-root";

    /// <summary>The client for <paramref name="version"/>; skips (or fails under KILN_REQUIRE_E2E=1) when it cannot run here.</summary>
    public static NixClient For(string version)
    {
        var client = new NixClient(version);
        if (!File.Exists(Path.Combine(client.Root, "usr/bin/nix-store")) || Environment.UserName != "root")
        {
            if (Environment.GetEnvironmentVariable("KILN_REQUIRE_E2E") == "1")
            {
                Assert.Fail($"the Nix {version} client chroot is missing at {client.Root} (run tests/Kiln.EndToEnd.Tests/setup-clients.sh as root)");
            }

            Assert.Skip($"the Nix {version} client chroot is not available (needs root and setup-clients.sh)");
        }

        return client;
    }

    /// <summary>Tests that build with the host's Nix 2.8 sandbox and Kiln's need root; skips (or fails under KILN_REQUIRE_E2E=1) otherwise.</summary>
    public static void RequireEndToEnd()
    {
        if (Environment.UserName == "root" && File.Exists("/usr/bin/nix-store") && File.Exists("/usr/bin/bwrap") && File.Exists("/bin/busybox"))
        {
            return;
        }

        if (Environment.GetEnvironmentVariable("KILN_REQUIRE_E2E") == "1")
        {
            Assert.Fail("building needs root, nix-bin, bubblewrap and busybox-static");
        }

        Assert.Skip("building needs root, nix-bin, bubblewrap and busybox-static");
    }

    public bool Is23 => Version.StartsWith("2.3.", StringComparison.Ordinal);

    /// <summary>
    /// Whether, as a remote builder's client, this Nix sends the whole derivation closure to a store that does not
    /// trust it (Nix 2.15 and later) rather than a bare BuildDerivation.
    /// </summary>
    public bool SendsDerivationClosures => System.Version.Parse(Version) >= new System.Version(2, 15);

    /// <summary>
    /// For <c>nix copy</c> and <c>nix path-info</c> of a .drv: Nix 2.4 and later read a .drv installable as its outputs
    /// unless told <c>--derivation</c>; Nix 2.3 has no such flag and takes the path as it is.
    /// </summary>
    public string[] DerivationFlag => Is23 ? [] : ["--derivation"];

    /// <summary>Nix 2.3 has no experimental-features setting, and later versions want nix-command enabled.</summary>
    private string Config => Is23
        ? "build-users-group = \nsandbox = false\nsubstituters = \n"
        : "experimental-features = nix-command\nbuild-users-group = \nsandbox = false\nsubstituters = \n";

    /// <summary>
    /// A fresh directory inside the chroot, named as the client sees it; dispose it (<c>using var</c>) so the cached
    /// chroots do not grow run after run (they once held 77 GiB of old workspaces and filled CI's disk).
    /// </summary>
    public Workspace NewWorkspace()
    {
        var inside = $"{ScratchDirectory}/{Guid.NewGuid():N}";
        Directory.CreateDirectory(HostPath(inside));
        return new Workspace(inside, HostPath(inside));
    }

    /// <summary>Where workspaces go inside a chroot; setup-clients.sh empties it before each run, for runs that were killed.</summary>
    public const string ScratchDirectory = "/tmp/kiln-e2e";

    /// <summary>Where a path inside the chroot is on the host.</summary>
    public string HostPath(string inside) => Root + inside;

    /// <summary>Starts a command in the chroot without waiting for it.</summary>
    public System.Diagnostics.Process Start(KilnProcess kiln, params string[] command)
    {
        var info = new System.Diagnostics.ProcessStartInfo("unshare") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in Arguments(kiln, command))
        {
            info.ArgumentList.Add(arg);
        }

        return System.Diagnostics.Process.Start(info)!;
    }

    /// <summary>Runs a command in the chroot with Kiln's socket and store root mounted; returns whatever happened.</summary>
    public ProcessResult Run(KilnProcess kiln, params string[] command) => Processes.Run("unshare", Arguments(kiln, command));

    private string[] Arguments(KilnProcess kiln, string[] command)
    {
        ArgumentNullException.ThrowIfNull(kiln);
        Directory.CreateDirectory(Path.Combine(Root, "run/kiln"));
        Directory.CreateDirectory(Path.Combine(Root, "run/kiln-root"));
        Directory.CreateDirectory(kiln.StoreRoot);
        Directory.CreateDirectory(Path.Combine(Root, "nix/store"));
        Directory.CreateDirectory(Path.Combine(kiln.StoreRoot, "nix/store"));

        // Nix 2.3's unix:// store ignores ?root= and reads path contents from /nix/store itself, so for it Kiln's
        // tree is mounted there, as it would be on a machine whose daemon is Kiln.
        const string Script = """
            set -e
            root="$1"; sockets="$2"; store="$3"; config="$4"; mount_store="$5"; shift 5
            mount -t proc proc "$root/proc"
            mount --bind "$sockets" "$root/run/kiln"
            mount --bind "$store" "$root/run/kiln-root"
            if [ "$mount_store" = yes ]; then mount --bind "$store/nix/store" "$root/nix/store"; fi
            exec chroot "$root" /usr/bin/env -i HOME=/tmp/kiln-e2e PATH=/usr/bin:/bin NIX_CONFIG="$config" "$@"
            """;
        return ["--mount", "--propagation", "private", "--", "sh", "-c", Script, "sh", Root, kiln.SocketDirectory, kiln.StoreRoot, Config,
            Is23 ? "yes" : "no", .. command];
    }

    /// <summary>Runs a command and fails the test unless it succeeds.</summary>
    public ProcessResult Ok(KilnProcess kiln, params string[] command)
    {
        var result = Run(kiln, command);
        Assert.True(result.ExitCode == 0, $"Nix {Version}: {string.Join(' ', command)} failed ({result.ExitCode}):\n{result.Stderr}");
        return result;
    }
}
