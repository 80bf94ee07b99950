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

    /// <summary>How long this front door's step claims last unless renewed (<c>--step-claim-lease</c>).</summary>
    public TimeSpan StepClaimLease { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>The systems the embedded agent builds for (Nix's <c>system</c> and <c>extra-platforms</c>).</summary>
    public IReadOnlyList<string> Systems { get; init; } = ["x86_64-linux"];

    /// <summary>The features the embedded agent has (Nix's <c>system-features</c>; derivations' <c>requiredSystemFeatures</c> must be among them).</summary>
    public IReadOnlyList<string> SystemFeatures { get; init; } = ["benchmark", "big-parallel", "nixos-test"];

    /// <summary>Builds at once (Nix's <c>max-jobs</c>).</summary>
    public int MaxJobs { get; init; } = Math.Max(1, Environment.ProcessorCount);

    /// <summary>Builds the embedded agent runs at once (null: <see cref="MaxJobs"/>; 0: none, a pure coordinator for remote agents).</summary>
    public int? LocalSlots { get; init; }

    /// <summary>A remote agent not heard from for this long is lost, and its builds run elsewhere.</summary>
    public TimeSpan AgentTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>How long a build no connected agent can run waits for one before it fails.</summary>
    public TimeSpan AgentWait { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary><c>NIX_BUILD_CORES</c> for each build.</summary>
    public int Cores { get; init; } = Environment.ProcessorCount;

    /// <summary>Extra paths in every sandbox, as Nix's <c>sandbox-paths</c> (<c>/bin/sh=/bin/busybox</c>).</summary>
    public IReadOnlyList<string> SandboxPaths { get; init; } = [];

    /// <summary>How often the running server deletes blobs nothing names (zero: never; <c>kiln store gc</c> still does).</summary>
    public TimeSpan BlobSweepInterval { get; init; } = TimeSpan.FromHours(1);

    /// <summary>How often the server collects garbage in every account's view (<see cref="GcService"/>); zero: never by itself.</summary>
    public TimeSpan GcInterval { get; init; }

    /// <summary>Free bytes on the data directory's file system under which a collection runs at once; zero: free space does not start one.</summary>
    public long GcMinFree { get; init; }

    /// <summary>Paths registered less than this long ago survive the server's own collections (pushes in flight).</summary>
    public TimeSpan GcKeepRecent { get; init; } = TimeSpan.FromMinutes(10);

    /// <summary>The operator's rules for pushes to accounts' caches (push-to): where file:// may write, private addresses, retries.</summary>
    public Kiln.Push.PushOptions Push { get; init; } = new();

    /// <summary>How often free space is looked at for <see cref="GcMinFree"/>.</summary>
    public TimeSpan GcCheckInterval { get; init; } = TimeSpan.FromMinutes(1);

    /// <summary>The network fixed-output builds get (their own by default).</summary>
    public Kiln.Agent.FixedOutputNetworkOptions FixedOutputNetwork { get; init; } = new();

    /// <summary>How the embedded agent runs <c>builtin:fetchurl</c> in a sandbox; null refuses it.</summary>
    public Kiln.Agent.BuiltinFetcher? Fetcher { get; init; }

    /// <summary>Kiln's build limits (zero: none); clients may ask for tighter ones.</summary>
    public TimeSpan MaxSilentTime { get; init; }

    public TimeSpan BuildTimeout { get; init; }

    public long MaxLogSize { get; init; }

    /// <summary>The most memory one build uses, its tmpfs files included (zero: no limit).</summary>
    public long BuildMemory { get; init; }

    /// <summary>The least memory a build is given when its package's history says it needs little.</summary>
    public long MinMemory { get; init; } = 256L << 20;

    /// <summary>The memory a build of a package never built before is given (zero: <see cref="BuildMemory"/>).</summary>
    public long DefaultMemory { get; init; }

    /// <summary>The fewest cores a build is given when its package's history says it needs few.</summary>
    public int MinCores { get; init; } = 1;

    /// <summary>The cores a build of a package never built before is given (zero: <see cref="Cores"/>).</summary>
    public int DefaultCores { get; init; }

    /// <summary>The most processes one build runs at once (zero: no limit).</summary>
    public int BuildProcesses { get; init; }

    /// <summary>The most bytes one build writes to disk, its outputs included (zero: no limit).</summary>
    public long BuildDisk { get; init; }

    /// <summary>Free space kept on the data directory's disk: under it, the build that wrote the most is stopped (zero: none kept).</summary>
    public long MinFreeDisk { get; init; }

    /// <summary>Where the cgroup file systems are; Kiln's build groups go in <c>kiln/</c> below it.</summary>
    public string CgroupRoot { get; init; } = "/sys/fs/cgroup";

    /// <summary>Where Kiln's sshd listens (<c>ADDRESS:PORT</c>); null: no SSH front door.</summary>
    public string? SshListen { get; init; } = "127.0.0.1:2222";

    /// <summary>The most bytes of one account's HTTP-uploaded NARs that wait for their narinfos.</summary>
    public long HttpStagingLimit { get; init; } = 16L << 30;

    /// <summary>Answer the HTTP cache's <c>nar/…</c> with redirects to the bucket's presigned URLs valid this long; null: send the bytes.</summary>
    public TimeSpan? NarRedirect { get; init; }

    /// <summary>
    /// The token a <c>/metrics</c> scrape from another host must send (<c>Authorization: Bearer …</c>); null: only
    /// scrapes from loopback (not forwarded by a reverse proxy) are answered.
    /// </summary>
    public string? MetricsToken { get; init; }

    /// <summary>A listener for agents only (<c>ADDRESS:PORT</c>); null: agents use the HTTP front's listener.</summary>
    public string? AgentListen { get; init; }

    /// <summary>The agent listener's TLS certificate and key (PEM files); null: plain HTTP (or TLS at a reverse proxy).</summary>
    public (string Certificate, string Key)? AgentTls { get; init; }

    /// <summary>
    /// The address users reach the HTTP front at (<c>--public-url</c>), when it is not the listener's own — behind a
    /// reverse proxy that ends TLS. Null: the address each request came to.
    /// </summary>
    public Uri? PublicUrl { get; init; }

    /// <summary>Where the HTTP binary cache listens (<c>ADDRESS:PORT</c>); null: no HTTP.</summary>
    public string? HttpListen { get; init; } = "127.0.0.1:8080";

    /// <summary>The system user SSH clients log in as (<c>ssh kiln@host</c>); created when missing.</summary>
    public string SshUser { get; init; } = "kiln";

    /// <summary>
    /// The ciphers Kiln's sshd offers (<c>--ssh-ciphers</c>, OpenSSH's <c>Ciphers</c> list); <c>default</c>: OpenSSH's own
    /// list; null: chosen for this CPU (<see cref="Ssh.SshInstallation.CiphersFor"/>).
    /// </summary>
    public string? SshCiphers { get; init; }

    /// <summary>OpenSSH's server, run as a child of Kiln.</summary>
    public string Sshd { get; init; } = "/usr/sbin/sshd";

    /// <summary>Kiln's SSH files: sshd's config, host key and pid file, the bridge's socket.</summary>
    public string SshDirectory => Path.Combine(DataDirectory, "ssh");

    public string EffectiveSocketPath => SocketPath ?? Path.Combine(DataDirectory, "daemon.sock");
}
