namespace Kiln.Agent;

/// <summary>How the embedded agent runs builds.</summary>
public sealed record SandboxOptions
{
    /// <summary>Where builds run (<c>builds/</c>) and inputs are unpacked (<c>unpacked/</c>).</summary>
    public required string WorkDirectory { get; init; }

    /// <summary>Builds at once (Nix's <c>max-jobs</c>).</summary>
    public int MaxJobs { get; init; } = Math.Max(1, Environment.ProcessorCount);

    /// <summary><c>NIX_BUILD_CORES</c> for each build (Nix's <c>cores</c>).</summary>
    public int Cores { get; init; } = Environment.ProcessorCount;

    /// <summary>Extra paths visible in every sandbox, as Nix's <c>sandbox-paths</c>: <c>target=source</c> or <c>path</c>; a trailing <c>?</c> makes it optional.</summary>
    public IReadOnlyList<string> SandboxPaths { get; init; } = [];

    /// <summary>Values a fixed-output derivation's <c>impureEnvVars</c> may receive (Nix's <c>impure-env</c>); never Kiln's own environment.</summary>
    public IReadOnlyDictionary<string, string> ImpureEnvironment { get; init; } = new Dictionary<string, string>();

    /// <summary>The network fixed-output builds get (by default their own, without the host's loopback or private ranges).</summary>
    public FixedOutputNetworkOptions FixedOutputNetwork { get; init; } = new();

    /// <summary>The program that runs <c>builtin:fetchurl</c> in a sandbox; null refuses such derivations.</summary>
    public BuiltinFetcher? Fetcher { get; init; }

    /// <summary>Where the cgroup file systems are (Kiln's build groups go in <c>kiln/</c> below it): the host's, or a subtree delegated to Kiln.</summary>
    public string CgroupRoot { get; init; } = Cgroup.SystemRoot;

    /// <summary>
    /// Free space to keep on the disk of <see cref="WorkDirectory"/> (the store's): when builds' writes take it below
    /// this, the build that wrote the most is stopped. 0: builds may fill the disk.
    /// </summary>
    public long MinFreeDisk { get; init; }

    /// <summary>The most bytes of unpacked inputs kept (by NAR size; least recently used go first); 0: no bound.</summary>
    public long InputCacheBytes { get; init; }

    public string Bubblewrap { get; init; } = "/usr/bin/bwrap";

    /// <summary>
    /// Kiln's launcher, <c>native/kiln-launch</c> beside Kiln's programs (built from <c>src/Kiln.Agent/native</c> with
    /// the host's C compiler). Where it is missing, a build starts through <see cref="Unshare"/>, a shell, mount(8)
    /// and <see cref="Setpriv"/> instead, the same steps a few milliseconds slower.
    /// </summary>
    public string? Launcher { get; init; } = Path.Combine(AppContext.BaseDirectory, "native", "kiln-launch");

    /// <summary>util-linux's <c>unshare</c>, which gives a root build's launcher its own mount namespace for <c>/dev</c>.</summary>
    public string Unshare { get; init; } = "/usr/bin/unshare";

    /// <summary>util-linux's <c>setpriv</c>, which makes a build its user before bubblewrap starts.</summary>
    public string Setpriv { get; init; } = "/usr/bin/setpriv";

    /// <summary>
    /// When Kiln runs as root, builds run as users <c>base+1</c> … <c>base+max-jobs</c> in group <c>base</c> (as Nix's
    /// <c>nixbld</c> users, which start at 30000 too); 0 runs them as Kiln's own user.
    /// </summary>
    public int BuildUsersBase { get; init; } = 30000;
}
