using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;

namespace Kiln.Agent;

/// <summary>
/// The sandbox Nix gives a build on Linux, as bubblewrap arguments: new user, PID, IPC, UTS and (unless the
/// derivation is fixed-output) network namespaces with only loopback; uid 1000 and gid 100; hostname
/// <c>localhost</c>; the builder as PID 1 in a new session; a fresh root with <c>/build</c> (the build directory,
/// also the working directory), a writable <c>/nix/store</c> with each input bind-mounted read-only at its path,
/// minimal <c>/dev</c>, <c>/proc</c>, <c>/tmp</c> (1777), and Nix's <c>/etc/passwd</c>, <c>/etc/group</c> and
/// <c>/etc/hosts</c>. Fixed-output builds get a network, <c>/etc/resolv.conf</c>, <c>/etc/services</c> and
/// <c>/etc/hosts</c> instead, as Nix gives them; Nix gives them the host's network, Kiln (unless the operator says
/// otherwise) a namespace of their own that <see cref="FixedOutputNetwork"/> connects once it exists, so the sandbox
/// waits on descriptor 8 until Kiln lets it go.
/// </summary>
internal static class SandboxLayout
{
    public static readonly IReadOnlyList<(string Name, string Contents)> EtcFiles =
    [
        ("passwd", "root:x:0:0:Nix build user:/build:/noshell\nnixbld:x:1000:100:Nix build user:/build:/noshell\nnobody:x:65534:65534:Nobody:/:/noshell\n"),
        ("group", "root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n"),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        ("nsswitch.conf", "hosts: files dns\nservices: files\n"),
        ("resolv.conf", FixedOutputNetwork.ResolvConf),
    ];

    private static readonly HashSet<string> BuiltinVariables = ["out", "url", "unpack", "executable", "TMPDIR", "TMP", "TEMP", "TEMPDIR", "NIX_BUILD_TOP", "PWD"];

    /// <summary>The descriptor an isolated fixed-output sandbox waits on before it runs the builder.</summary>
    public const int BlockDescriptor = 8;

    /// <summary>What runs instead of the derivation's builder (a built-in builder's program), with what it needs to see.</summary>
    public sealed record Command(string Program, IReadOnlyList<string> Arguments, IReadOnlyList<string> ReadOnlyPaths, IReadOnlyDictionary<string, string> Environment);

    /// <summary>The device nodes Nix's sandbox binds from the host (Nix adds kvm only for builds that need it, which Kiln does not offer).</summary>
    public static readonly IReadOnlyList<string> Devices = ["full", "null", "random", "tty", "urandom", "zero"];

    /// <summary>
    /// Lays out Nix's <c>/dev</c> in <paramref name="path"/>: empty files where the launcher bind-mounts the host's
    /// device nodes, <c>pts</c> where it mounts a private devpts, <c>shm</c> where it mounts a
    /// tmpfs open to all, and Nix's links (<c>fd</c>, the three
    /// standard streams, <c>ptmx</c> → <c>/dev/pts/ptmx</c>). The mounts are made in a mount namespace of the build's
    /// own, so they vanish with it and never show in the host's mount table.
    /// </summary>
    public static void DevDirectory(string path)
    {
        Directory.CreateDirectory(path);
        File.SetUnixFileMode(path, (UnixFileMode)Convert.ToInt32("755", 8));
        foreach (var device in Devices)
        {
            File.WriteAllBytes(Path.Combine(path, device), []);
        }

        Directory.CreateDirectory(Path.Combine(path, "pts"));
        Directory.CreateDirectory(Path.Combine(path, "shm"));
        foreach (var (name, target) in new[] { ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "/dev/pts/ptmx") })
        {
            File.CreateSymbolicLink(Path.Combine(path, name), target);
        }
    }

    public static List<string> BubblewrapArguments(Derivation derivation, BuildEnvironment environment, string buildDir, string storeDir,
        IReadOnlyList<(StorePath Path, string Tree)> inputs, string etc, IReadOnlyList<string> sandboxPaths, bool hostNetwork = false, Command? command = null,
        string? dev = null, long tmpfsBytes = 0)
    {
        // Files in a tmpfs are memory: each the build gets is as big as its memory limit at most (and counts toward it).
        string[] size = tmpfsBytes > 0 ? ["--size", tmpfsBytes.ToString(System.Globalization.CultureInfo.InvariantCulture)] : [];
        var fixedOutput = derivation.IsFixedOutput;
        var ownNetwork = fixedOutput && !hostNetwork;
        var args = new List<string>
        {
            "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--uid", "1000", "--gid", "100", "--hostname", "localhost",
            "--die-with-parent", "--new-session", "--as-pid-1", "--json-status-fd", "3",
        };
        if (!fixedOutput || ownNetwork)
        {
            args.Add("--unshare-net");
        }

        if (ownNetwork)
        {
            args.AddRange(["--block-fd", BlockDescriptor.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        }

        // Nix's sandbox root, /etc and /nix belong to root, which the build is not: it cannot write there. Here the
        // build's user owns everything bubblewrap makes, so those are made read-only by their modes instead.
        args.AddRange(["--perms", "0555", .. size, "--tmpfs", "/"]);
        args.AddRange(["--perms", "0555", "--dir", "/etc"]);
        args.AddRange(["--perms", "0555", "--dir", "/nix"]);
        args.AddRange(["--perms", "1777", "--dir", "/tmp"]);
        args.AddRange(["--bind", buildDir, BuildEnvironment.BuildDirectory]);
        args.AddRange(["--bind", storeDir, BuildEnvironment.StoreDirectory]);
        foreach (var (path, tree) in command is null ? inputs : [])
        {
            var info = new FileInfo(tree);
            if (info.LinkTarget is { } target)
            {
                args.AddRange(["--symlink", target, path.FullPath]);
            }
            else
            {
                args.AddRange(["--ro-bind", tree, path.FullPath]);
            }
        }

        // Nix's /dev, prepared by Kiln (see DevDirectory) when it is root; otherwise bubblewrap's, which also has
        // console and core. Either way /dev/shm is a tmpfs open to all, as Nix's.
        args.AddRange(dev is null ? ["--dev", "/dev", "--perms", "1777", .. size, "--tmpfs", "/dev/shm"] : ["--dev-bind", dev, "/dev"]);
        args.AddRange(["--proc", "/proc"]);
        args.AddRange(["--ro-bind", Path.Combine(etc, "passwd"), "/etc/passwd"]);
        args.AddRange(["--ro-bind", Path.Combine(etc, "group"), "/etc/group"]);
        if (fixedOutput)
        {
            args.AddRange(["--ro-bind", Path.Combine(etc, "nsswitch.conf"), "/etc/nsswitch.conf"]);
            foreach (var file in new[] { "/etc/resolv.conf", "/etc/services", "/etc/hosts" })
            {
                // The host's resolver may be on its loopback, which the build's own network cannot reach.
                args.AddRange(file == "/etc/resolv.conf" && ownNetwork ? ["--ro-bind", Path.Combine(etc, "resolv.conf"), file] : ["--ro-bind-try", file, file]);
            }
        }
        else
        {
            args.AddRange(["--ro-bind", Path.Combine(etc, "hosts"), "/etc/hosts"]);
        }

        foreach (var path in command?.ReadOnlyPaths ?? [])
        {
            args.AddRange(["--ro-bind-try", path, path]);
        }

        foreach (var entry in sandboxPaths)
        {
            var optional = entry.EndsWith('?');
            var spec = optional ? entry[..^1] : entry;
            var equals = spec.IndexOf('=', StringComparison.Ordinal);
            var (target, source) = equals < 0 ? (spec, spec) : (spec[..equals], spec[(equals + 1)..]);
            args.AddRange([optional ? "--ro-bind-try" : "--ro-bind", source, target]);
        }

        args.AddRange(["--chdir", BuildEnvironment.BuildDirectory, "--clearenv"]);
        // A built-in builder is Kiln's program, not the derivation's: it gets what it reads and the proxy settings,
        // never what would run code in it (LD_PRELOAD, DOTNET_STARTUP_HOOKS, …).
        foreach (var (name, value) in environment.Variables.Where(v => command is null || BuiltinVariables.Contains(v.Key) || v.Key.EndsWith("_proxy", StringComparison.OrdinalIgnoreCase)))
        {
            args.AddRange(["--setenv", name, value]);
        }

        foreach (var (name, value) in command?.Environment ?? new Dictionary<string, string>())
        {
            args.AddRange(["--setenv", name, value]); // after the derivation's, so Kiln's own settings win
        }

        args.Add("--");
        if (command is not null)
        {
            args.Add(command.Program);
            args.AddRange(command.Arguments);
            return args;
        }

        args.Add(BuildEnvironment.RewriteStrings(derivation.Builder, environment.Rewrites));
        args.AddRange(derivation.Arguments.Select(a => BuildEnvironment.RewriteStrings(a, environment.Rewrites)));
        return args;
    }
}
