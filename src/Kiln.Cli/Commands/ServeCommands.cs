using System.CommandLine;
using Kiln.Server;
using Kiln.Store;
using Kiln.Store.Metadata;

namespace Kiln.Cli.Commands;

/// <summary><c>kiln serve</c>, and <c>kiln store …</c> maintenance that works with the server stopped.</summary>
internal static class ServeCommands
{
    private static Option<string> DataOption() => new("--data")
    {
        Description = "The data directory (created on first start): metadata, blobs, daemon.sock.",
        Required = true,
    };

    public static Command Serve()
    {
        var data = DataOption();
        var socket = new Option<string?>("--socket") { Description = "The worker-protocol socket (default DATA/daemon.sock)." };
        var account = new Option<string>("--account") { Description = "The account clients of the socket act as.", DefaultValueFactory = _ => "local" };
        var maxJobs = new Option<int>("--max-jobs") { Description = "Builds at once.", DefaultValueFactory = _ => Math.Max(1, Environment.ProcessorCount) };
        var cores = new Option<int>("--cores", "--max-cpu")
        {
            Description = "The most cores one build is given (NIX_BUILD_CORES, and its CPU quota): the top of what --min-cpu and history grant (default: all of this machine's).",
            DefaultValueFactory = _ => Environment.ProcessorCount,
        };
        var minCores = new Option<int>("--min-cpu")
        {
            Description = "The fewest cores a build is given: a build gets twice the parallelism its package's latest builds reached (CPU time over wall " +
                "time), at least this and at most --cores (default 1).",
            DefaultValueFactory = _ => 1,
        };
        var defaultCores = new Option<int>("--default-cpu")
        {
            Description = "The cores a build of a package Kiln has not built before is given (0: --cores, the default).",
            DefaultValueFactory = _ => 0,
        };
        var sandboxPaths = new Option<string[]>("--sandbox-path")
        {
            Description = "An extra path in every build sandbox, as Nix's sandbox-paths: TARGET=SOURCE or PATH (repeatable).",
            AllowMultipleArgumentsPerToken = false,
        };
        // Finite by default (Nix's are unlimited): on a shared service one build must not hold a slot, or fill the
        // disk with its log, for ever. Operators lift them with 0.
        var maxSilent = new Option<int>("--max-silent-time") { Description = "Kill a build silent this many seconds (0: never).", DefaultValueFactory = _ => 3 * 3600 };
        var timeout = new Option<int>("--timeout") { Description = "Kill a build running this many seconds (0: never).", DefaultValueFactory = _ => 24 * 3600 };
        var maxLog = new Option<long>("--max-build-log-size") { Description = "Kill a build whose log exceeds this many bytes (0: no limit).", DefaultValueFactory = _ => 256L << 20 };
        var sshListen = new Option<string>("--ssh-listen")
        {
            Description = "Where Kiln's sshd listens, ADDRESS:PORT, or 'none' for no SSH front door (needs root and openssh-server).",
            DefaultValueFactory = _ => "127.0.0.1:2222",
        };
        var httpListen = new Option<string>("--http-listen")
        {
            Description = "Where the HTTP binary cache listens, ADDRESS:PORT, or 'none'.",
            DefaultValueFactory = _ => "127.0.0.1:8080",
        };
        var publicUrl = new Option<string?>("--public-url")
        {
            Description = "The address users reach the HTTP front at, e.g. https://kiln.example.com when a reverse proxy ends TLS: the dashboard's " +
                "login cookie is then Secure, requests from pages of other origins are told apart by it, and links Kiln gives out use it.",
        };
        var substituters = new Option<string>("--substituters") { Description = "Upstream binary caches for accounts that set none, space-separated.", DefaultValueFactory = _ => "" };
        var trustedKeys = new Option<string>("--trusted-public-keys") { Description = "Keys trusted for every account's upstream caches, space-separated.", DefaultValueFactory = _ => "" };
        var fodNetwork = new Option<string>("--fod-network")
        {
            Description = "The network fixed-output builds and builtin:fetchurl get: 'isolated' (their own, through slirp4netns, without the host's " +
                "loopback, addresses, link-local or private ranges) or 'host' (the host's, as stock Nix gives them).",
            DefaultValueFactory = _ => "isolated",
        };
        fodNetwork.AcceptOnlyFromAmong("isolated", "host");
        var fodAllow = new Option<string[]>("--fod-allow-network")
        {
            Description = "A range isolated fixed-output builds may reach although it is private or the host's, as CIDR (10.1.2.0/24; repeatable).",
            AllowMultipleArgumentsPerToken = false,
        };
        var blobSweep = new Option<int>("--blob-sweep-interval")
        {
            Description = "Seconds between sweeps of blobs nothing names (uploads or builds whose registration never came; 0: only 'kiln store gc').",
            DefaultValueFactory = _ => 3600,
        };
        var gcInterval = new Option<int>("--gc-interval")
        {
            Description = "Seconds between garbage collections of every account's view: paths no root, pin or live session holds go, then blobs " +
                "nothing names (default 0: only when asked, or by --gc-min-free).",
        };
        var gcMinFree = new Option<string>("--gc-min-free")
        {
            Description = "Collect garbage at once when the data directory's file system has less free: SIZE, N% of that file system, or 0 (the default: free space does not start one).",
            DefaultValueFactory = _ => "0",
        };
        var gcKeepRecent = new Option<int>("--gc-keep-recent")
        {
            Description = "Seconds a newly registered path survives the server's own collections, rooted or not (default 600): an HTTP push " +
                "registers a closure path by path, and what it sent first must still be there when the rest comes.",
            DefaultValueFactory = _ => 600,
        };
        var credentialsKey = new Option<string?>("--credentials-key")
        {
            Description = "A file holding the key accounts' credentials (netrc: upstream and push-to passwords) are sealed with in the database " +
                "(32 bytes, base64; default DATA/keys/credentials.key, made on first use). Several front doors of one installation need the same one.",
        };
        var pushFileRoots = new Option<string[]>("--push-file-root")
        {
            Description = "A directory accounts' file:// push-to targets may lie under (repeatable; default none: no account pushes into this machine's directories).",
            AllowMultipleArgumentsPerToken = false,
        };
        var pushPrivate = new Option<bool>("--push-private-targets")
        {
            Description = "Let accounts' http(s):// and s3:// push-to targets be on loopback, private and link-local addresses (off by default: an account's push must not reach this server's own network).",
        };
        var pushRetry = new Option<int>("--push-retry")
        {
            Description = "Seconds before a failed push is tried again; each next wait doubles, up to an hour (default 30).",
            DefaultValueFactory = _ => 30,
        };
        var fetchMax = new Option<long>("--fetch-max-size")
        {
            Description = "The most bytes one builtin:fetchurl download may bring (default 4 GiB).",
            DefaultValueFactory = _ => 4L << 30,
        };
        var buildMemory = new Option<string>("--build-memory")
        {
            Description = "The most memory one build uses, files in its /tmp, build directory and /dev/shm included (the top of what --min-mem and history grant): " +
                "SIZE (512MiB, 8GiB), N% of this machine's, or 0 for no limit (default 80%).",
            DefaultValueFactory = _ => "80%",
        };
        var minMemory = new Option<string>("--min-mem")
        {
            Description = "The least memory a build is given: a build gets twice what its package's latest builds used (the derivation name " +
                "without version), at least this and at most --build-memory; one killed for going over it is built again with twice it (default 256MiB).",
            DefaultValueFactory = _ => "256MiB",
        };
        var defaultMemory = new Option<string>("--default-mem")
        {
            Description = "The memory a build of a package Kiln has not built before is given: SIZE, N% of this machine's, or 0 for --build-memory (the default).",
            DefaultValueFactory = _ => "0",
        };
        var buildProcesses = new Option<int>("--build-processes")
        {
            Description = "The most processes and threads one build runs at once (0: no limit).",
            DefaultValueFactory = _ => 10_000,
        };
        var buildDisk = new Option<string>("--build-disk")
        {
            Description = "The most one build writes to disk, its outputs included: SIZE (10GiB), N% of the data directory's file system, or 0 for no limit (default 50%).",
            DefaultValueFactory = _ => "50%",
        };
        var minFree = new Option<string>("--min-free-disk")
        {
            Description = "Free space kept on the data directory's file system: under it, the build that wrote the most is stopped. SIZE, N% of that file system, or 0 (default 2%).",
            DefaultValueFactory = _ => "2%",
        };
        var stagingLimit = new Option<string>("--http-staging-size")
        {
            Description = "The most bytes of one account's NARs uploaded over HTTP that wait for their narinfos (default 16GiB).",
            DefaultValueFactory = _ => "16GiB",
        };
        var cgroupRoot = new Option<string>("--cgroup-root")
        {
            Description = "Where the cgroup file systems are mounted, or a cgroup v2 subtree delegated to Kiln; build groups go in kiln/ below it.",
            DefaultValueFactory = _ => "/sys/fs/cgroup",
        };
        var sshUser = new Option<string>("--ssh-user") { Description = "The user SSH clients log in as (created if missing).", DefaultValueFactory = _ => "kiln" };
        var sshCiphers = new Option<string?>("--ssh-ciphers")
        {
            Description = "The ciphers sshd offers, as OpenSSH's Ciphers list, or 'default' for OpenSSH's own (default: AES-GCM alone where the CPU has " +
                "AES instructions, the faster for NARs; OpenSSH's own list elsewhere).",
        };
        var database = new Option<string?>("--database")
        {
            Description = "Keep metadata in PostgreSQL instead of DATA/kiln.db: postgres://USER@HOST[:PORT]/DATABASE[?password_file=FILE&sslmode=…] or " +
                "Host=…;Database=…; the password from that file or KILN_DATABASE_PASSWORD. Remembered in DATA/database for later starts and other commands.",
        };
        var blobs = new Option<string?>("--blobs")
        {
            Description = "Keep NARs in an S3-compatible bucket instead of DATA/blobs: s3://BUCKET/PREFIX?region=…&endpoint=https://…; credentials from " +
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the AWS shared credentials file, or &credentials_file=FILE&profile=NAME. Remembered in DATA/blob-store.",
        };
        var blobCache = new Option<string>("--blob-cache-size")
        {
            Description = "With --blobs: the most bytes of recently used NARs kept on local disk in DATA/blob-cache (SIZE, N% of the data directory's file system, or 0; default 10GiB).",
            DefaultValueFactory = _ => "10GiB",
        };
        var claimLease = new Option<int>("--step-claim-lease")
        {
            Description = "With several front doors on one database: seconds a front door's claim on a build lasts unless renewed, so the builds of one " +
                "that went away (killed, cut off) are taken over by another after this (default 30).",
            DefaultValueFactory = _ => 30,
        };
        var narRedirect = new Option<bool>("--nar-redirect")
        {
            Description = "With --blobs: answer the HTTP cache's nar/… with a redirect to a short-lived presigned URL of the bucket, so NAR bytes go from " +
                "the bucket to clients, not through Kiln (clients must reach the bucket's endpoint).",
        };
        var narRedirectLifetime = new Option<int>("--nar-redirect-lifetime")
        {
            Description = "Seconds a --nar-redirect URL stays valid (default 300, at most 3600: a URL outlives the revocation of the token it was given for).",
            DefaultValueFactory = _ => 300,
        };
        var localSlots = new Option<int?>("--local-slots")
        {
            Description = "Builds the agent inside this server runs at once (default: --max-jobs; 0: none, builds only on remote agents that dial in with 'kiln agent').",
        };
        var agentTimeout = new Option<int>("--agent-timeout")
        {
            Description = "Seconds after which a remote agent not heard from is lost and its builds run on another agent (default 30).",
            DefaultValueFactory = _ => 30,
        };
        var agentWait = new Option<int>("--agent-wait")
        {
            Description = "Seconds a build waits for an agent with its system and features to connect before it fails (default 60; 0: fail at once).",
            DefaultValueFactory = _ => 60,
        };
        var agentListen = new Option<string?>("--agent-listen")
        {
            Description = "A listener for build agents only, ADDRESS:PORT (default: agents use the --http-listen listener).",
        };
        var agentTlsCert = new Option<string?>("--agent-tls-cert") { Description = "With --agent-listen: serve agents HTTPS with this certificate (PEM; with --agent-tls-key)." };
        var agentTlsKey = new Option<string?>("--agent-tls-key") { Description = "The --agent-tls-cert certificate's private key (PEM)." };
        var metricsToken = new Option<string?>("--metrics-token")
        {
            Description = "A file holding the token a /metrics scrape from another host must send as 'Authorization: Bearer TOKEN' (without it, only " +
                "scrapes from this host are answered, and none a reverse proxy forwards).",
        };
        var command = new Command("serve", "Run Kiln: the store, the builder, the Nix daemon protocol on a unix socket and sshd in front, until SIGTERM or SIGINT.")
        {
            data, socket, account, maxJobs, cores, sandboxPaths, maxSilent, timeout, maxLog, sshListen, sshUser, sshCiphers, httpListen, substituters, trustedKeys,
            fodNetwork, fodAllow, fetchMax, blobSweep, buildMemory, buildProcesses, buildDisk, minFree, cgroupRoot, stagingLimit, database, blobs, blobCache, claimLease,
            narRedirect, narRedirectLifetime, localSlots, agentTimeout, agentWait, minMemory, defaultMemory, agentListen, agentTlsCert, agentTlsKey,
            minCores, defaultCores, metricsToken, publicUrl, gcInterval, gcMinFree, gcKeepRecent, pushFileRoots, pushPrivate, pushRetry, credentialsKey,
            // (Read before parsing, by ConfigFile: listed here for the help.)
            new Option<string?>("--config") { Description = "A file of settings, one 'name = value' per line (the options' names without --; '#' comments); the command line's options win." },
        };
        command.SetAction(async (result, cancellationToken) =>
        {
            var directory = Path.GetFullPath(result.GetValue(data)!);
            // What the data directory is bound to (its database, its bucket), remembered for later starts and other commands.
            void Bind(string? target, Action<string, string> bind)
            {
                if (string.IsNullOrEmpty(target))
                {
                    return;
                }

                try
                {
                    // Under the data directory's lock: a second kiln serve given another database must not rebind the
                    // directory a running server (and sshd's key lookups) use, and is refused by the lock instead.
                    Directory.CreateDirectory(directory);
                    using var dataLock = DataDirectoryLock.Acquire(directory, "kiln serve");
                    bind(directory, target);
                }
                catch (ArgumentException e)
                {
                    throw new CommandException(e.Message);
                }
            }

            Bind(result.GetValue(database), MetadataStores.Bind);
            Bind(result.GetValue(blobs), Kiln.Store.Blobs.BlobStores.Bind);
            Bind(result.GetValue(credentialsKey), (dir, file) =>
            {
                var full = Path.GetFullPath(file);
                try
                {
                    _ = CredentialSeal.FromText(File.ReadAllText(full), full);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or Kiln.Protocol.KilnException)
                {
                    throw new ArgumentException($"--credentials-key: {e.Message} (make one with: head -c 32 /dev/urandom | base64 > FILE)");
                }

                DataDirectoryBindings.Write(dir, CredentialSeal.BindingFile, full);
            });
            if (result.GetValue(narRedirect) && Kiln.Store.Blobs.BlobStores.ForDataDirectory(directory) is null)
            {
                throw new CommandException("--nar-redirect sends clients to the bucket's own URLs: it needs --blobs s3://… (the blob directory has none)");
            }

            if ((result.GetValue(agentTlsCert) is null) != (result.GetValue(agentTlsKey) is null) || (result.GetValue(agentTlsCert) is not null && result.GetValue(agentListen) is null))
            {
                throw new CommandException("--agent-tls-cert and --agent-tls-key go together, with --agent-listen");
            }

            long ShareOfDisk(long percent) => Kiln.Agent.DiskGuard.FileSystemBytes(directory) / 100 * percent;
            var options = new ServerOptions
            {
                DataDirectory = directory,
                SocketPath = result.GetValue(socket) is { } s ? Path.GetFullPath(s) : null,
                SocketAccount = Kiln.Store.Accounts.AccountName.Validate(result.GetValue(account)!), // (never a deleted account's nameless row)
                MaxJobs = Math.Max(1, result.GetValue(maxJobs)),
                LocalSlots = result.GetValue(localSlots) is { } slots ? Math.Max(0, slots) : null,
                AgentTimeout = TimeSpan.FromSeconds(Math.Max(3, result.GetValue(agentTimeout))),
                AgentWait = TimeSpan.FromSeconds(Math.Max(0, result.GetValue(agentWait))),
                AgentListen = result.GetValue(agentListen) is { } agents ? ParseListen(agents) : null,
                AgentTls = result.GetValue(agentTlsCert) is { } cert ? (Path.GetFullPath(cert), Path.GetFullPath(result.GetValue(agentTlsKey)!)) : null,
                Cores = Math.Max(1, result.GetValue(cores)),
                MinCores = Math.Max(1, result.GetValue(minCores)),
                DefaultCores = Math.Max(0, result.GetValue(defaultCores)),
                SandboxPaths = result.GetValue(sandboxPaths) ?? [],
                MaxSilentTime = TimeSpan.FromSeconds(result.GetValue(maxSilent)),
                BuildTimeout = TimeSpan.FromSeconds(result.GetValue(timeout)),
                MaxLogSize = result.GetValue(maxLog),
                BuildMemory = Size(result.GetValue(buildMemory)!, percent => Kiln.Agent.HostMemory.TotalBytes() / 100 * percent, "this machine's memory"),
                BuildDisk = Size(result.GetValue(buildDisk)!, ShareOfDisk, "the data directory's file system"),
                MinMemory = Size(result.GetValue(minMemory)!),
                DefaultMemory = Size(result.GetValue(defaultMemory)!, percent => Kiln.Agent.HostMemory.TotalBytes() / 100 * percent, "this machine's memory"),
                // Keeping all of the disk free would stop every build that writes a byte.
                MinFreeDisk = Size(result.GetValue(minFree)!, percent => percent < 100 ? ShareOfDisk(percent)
                    : throw new CommandException($"--min-free-disk {percent}% would stop every build that writes; keep at most 99%"), "the data directory's file system"),
                BuildProcesses = Math.Max(0, result.GetValue(buildProcesses)),
                CgroupRoot = Path.GetFullPath(result.GetValue(cgroupRoot)!),
                HttpStagingLimit = Size(result.GetValue(stagingLimit)!),
                SshListen = result.GetValue(sshListen) is "none" or "" ? null : result.GetValue(sshListen),
                SshUser = result.GetValue(sshUser)!,
                SshCiphers = result.GetValue(sshCiphers) is { } ciphers ? CipherList(ciphers) : null, // (an empty one is refused)
                HttpListen = result.GetValue(httpListen) is "none" or "" ? null : ParseListen(result.GetValue(httpListen)!),
                PublicUrl = result.GetValue(publicUrl) is { Length: > 0 } url ? ParsePublicUrl(url) : null,
                FixedOutputNetwork = new Kiln.Agent.FixedOutputNetworkOptions
                {
                    Isolated = result.GetValue(fodNetwork) == "isolated",
                    Allowed = (result.GetValue(fodAllow) ?? []).Select(ParseRange).ToList(),
                },
                BlobSweepInterval = TimeSpan.FromSeconds(Math.Max(0, result.GetValue(blobSweep))),
                GcInterval = TimeSpan.FromSeconds(Math.Max(0, result.GetValue(gcInterval))),
                GcMinFree = Size(result.GetValue(gcMinFree)!, percent => percent < 100 ? ShareOfDisk(percent)
                    : throw new CommandException($"--gc-min-free {percent}% would collect garbage every minute; keep at most 99%"), "the data directory's file system"),
                GcKeepRecent = TimeSpan.FromSeconds(Math.Max(0, result.GetValue(gcKeepRecent))),
                Push = new Kiln.Push.PushOptions
                {
                    FileRoots = [.. (result.GetValue(pushFileRoots) ?? []).Select(Path.GetFullPath)],
                    AllowPrivateAddresses = result.GetValue(pushPrivate),
                    RetryBase = TimeSpan.FromSeconds(Math.Max(1, result.GetValue(pushRetry))),
                },
                StepClaimLease = TimeSpan.FromSeconds(Math.Max(3, result.GetValue(claimLease))),
                MetricsToken = ReadMetricsToken(result.GetValue(metricsToken)),
                NarRedirect = result.GetValue(narRedirect) ? TimeSpan.FromSeconds(Math.Clamp(result.GetValue(narRedirectLifetime), 10, 3600)) : null,
                Fetcher = Kiln.Agent.BuiltinFetcher.ForThisProcess() with { MaxDownloadBytes = Math.Max(1, result.GetValue(fetchMax)) },
            };
            var storeOptions = new StoreOptions
            {
                DataDirectory = directory,
                DefaultSubstituters = result.GetValue(substituters)!.Split(' ', StringSplitOptions.RemoveEmptyEntries),
                DefaultTrustedPublicKeys = result.GetValue(trustedKeys)!.Split(' ', StringSplitOptions.RemoveEmptyEntries),
                BlobCacheBytes = Size(result.GetValue(blobCache)!, ShareOfDisk, "the data directory's file system"),
            };
            return await KilnServer.RunAsync(options, storeOptions, cancellationToken).ConfigureAwait(false);
        });
        return command;
    }

    // The token is read at start (not its file's name kept): a missing file or an empty or short token is one clear line.
    private static string? ReadMetricsToken(string? file)
    {
        if (file is null)
        {
            return null;
        }

        string token;
        try
        {
            token = File.ReadAllText(file).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CommandException($"--metrics-token: cannot read {file}: {e.Message}");
        }

        return token.Length >= 16 && !token.Any(char.IsWhiteSpace)
            ? token
            : throw new CommandException($"--metrics-token: {file} must hold one token of at least 16 characters (e.g. from 'openssl rand -hex 32')");
    }

    // An absolute http(s) URL of a host (a path is allowed: a proxy may put Kiln under one), without a query.
    private static Uri ParsePublicUrl(string text) =>
        Uri.TryCreate(text.TrimEnd('/'), UriKind.Absolute, out var url) && url.Scheme is "http" or "https" && url.Query.Length == 0 && url.UserInfo.Length == 0
            ? url
            : throw new ArgumentException($"--public-url: '{text}' is not an http:// or https:// URL (e.g. https://kiln.example.com)");

    // Checked before anything starts (the front door's own check would only leave the server without sshd).
    private static string CipherList(string text)
    {
        try
        {
            _ = Kiln.Server.Ssh.SshInstallation.CiphersFor(text);
            return text;
        }
        catch (InvalidOperationException e)
        {
            throw new CommandException(e.Message);
        }
    }

    // ADDRESS:PORT, checked before anything starts so a typo is one clear line.
    private static string ParseListen(string text) =>
        System.Net.IPEndPoint.TryParse(text, out var endpoint) && endpoint.Port != 0 ? text
            : throw new CommandException($"'{text}' is not ADDRESS:PORT (for example 127.0.0.1:8080), or 'none'");

    // SIZE with an optional binary unit (K, M, G, T, with or without "iB"; 512MiB, 8GiB, a plain number of bytes), N% of
    // what share reckons (where the option takes a share: of this machine's memory, of the data file system), or 0.
    internal static long Size(string text, Func<long, long>? share = null, string? of = null)
    {
        var match = System.Text.RegularExpressions.Regex.Match(text.Trim(), @"^([0-9]+)\s*(%|[KMGT]?)(?:i?B)?$", System.Text.RegularExpressions.RegexOptions.IgnoreCase);
        if (!match.Success || (share is null && match.Groups[2].Value == "%") || !long.TryParse(match.Groups[1].Value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var number))
        {
            throw new CommandException($"'{text}' is not a size (for example 512MiB or 8GiB{(share is not null ? ", 80%" : "")}, or 0)");
        }

        var unit = match.Groups[2].Value.ToUpperInvariant();
        if (unit == "%")
        {
            return number is > 0 and <= 100 ? share!(number) : throw new CommandException($"'{text}': a share of {of} is 1% to 100%");
        }

        var shift = "_KMGT".IndexOf(unit.Length == 0 ? '_' : unit[0], StringComparison.Ordinal) * 10;
        return number <= long.MaxValue >> shift ? number << shift : throw new CommandException($"'{text}' is too large");
    }

    internal static System.Net.IPNetwork ParseRange(string text) =>
        System.Net.IPNetwork.TryParse(text, out var range) && range.BaseAddress.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? range
            : throw new CommandException($"'{text}' is not an IPv4 range in CIDR form (for example 10.1.2.0/24 or 192.0.2.7/32)");

    /// <summary>
    /// <c>kiln builtin-fetchurl</c>: Nix's <c>builtin:fetchurl</c>, run by Kiln as the builder of a fixed-output sandbox
    /// (not for people: it reads <c>url</c>, <c>out</c>, <c>unpack</c> and <c>executable</c> from its environment).
    /// </summary>
    public static Command BuiltinFetchurl()
    {
        var command = new Command(Kiln.Agent.BuiltinFetcher.CommandName, "Download a builtin:fetchurl derivation's output (run by Kiln inside a build sandbox).") { Hidden = true };
        command.SetAction((_, cancellationToken) =>
            Kiln.Agent.BuiltinFetchurl.RunAsync(Environment.GetEnvironmentVariable, Console.Error, cancellationToken));
        return command;
    }

    public static Command Store()
    {
        var gcData = DataOption();
        var gcAccount = new Option<string>("--socket-account") { Description = "The account whose view is unpacked under DATA/root (as for kiln serve).", DefaultValueFactory = _ => "local" };
        var dryRun = new Option<bool>("--dry-run") { Description = "Only say which paths would leave which account's view, and why; delete nothing." };
        var gc = new Command("gc", "Collect garbage in every account's view and delete blobs nothing names (server stopped).") { gcData, gcAccount, dryRun };
        gc.SetAction(async (result, cancellationToken) =>
        {
            var directory = Path.GetFullPath(result.GetValue(gcData)!);
            using var dataLock = DataDirectoryLock.Acquire(directory, "kiln store gc");
            var store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = directory, MaterialisedAccount = result.GetValue(gcAccount) }, cancellationToken).ConfigureAwait(false);
            await using (store.ConfigureAwait(false))
            {
                // The accounts' retention holds here as in kiln serve's collections.
                store.AccountPolicy = new Kiln.Accounts.SettingsAccountPolicy(store.Settings, new Dictionary<string, long>());
                if (result.GetValue(dryRun))
                {
                    foreach (var (account, dead) in await store.DeadPathsAsync(cancellationToken).ConfigureAwait(false))
                    {
                        foreach (var path in dead)
                        {
                            Console.Out.Write($"{account}\t{path}\n");
                        }
                    }

                    Console.Error.Write("(these paths would go: no root, pin or session of their account holds them, it has not used them within its retention, nor do paths it keeps refer to them; " +
                        "their blobs go too unless another account holds the same content)\n");
                    return 0;
                }

                // With the server stopped none of its uploads is in flight, so no grace period is needed for blobs. On a
                // database other front doors share, theirs may be (a blob stored and not yet named, a multipart upload
                // under way): the store's grace period spares those, as in kiln serve's own collections.
                var grace = store.SharedWithOtherFrontDoors ? (TimeSpan?)null : TimeSpan.Zero;
                var (paths, bytes, blobs) = await store.CollectAllGarbageAsync(grace, cancellationToken).ConfigureAwait(false);
                Console.Out.Write($"deleted {paths} paths ({bytes} bytes of NAR) from accounts' views; removed {blobs} blobs\n");
            }

            return 0;
        });

        var verifyData = DataOption();
        var verify = new Command("verify", "Re-hash every blob and check every path has its contents (server stopped).") { verifyData };
        verify.SetAction(async (result, cancellationToken) =>
        {
            var directory = Path.GetFullPath(result.GetValue(verifyData)!);
            using var dataLock = DataDirectoryLock.Acquire(directory, "kiln store verify");
            var store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = directory }, cancellationToken).ConfigureAwait(false);
            await using (store.ConfigureAwait(false))
            {
                var report = await StoreMaintenance.VerifyAllAsync(store, message => Console.Error.WriteLine(message), cancellationToken).ConfigureAwait(false);
                foreach (var problem in report.Problems)
                {
                    Console.Out.Write(problem + "\n");
                }

                Console.Out.Write($"{report.Blobs} blobs ({report.Bytes} bytes) checked, {report.Problems.Count} problems\n");
                return report.Problems.Count == 0 ? 0 : 1;
            }
        });

        var migrateData = DataOption();
        var toDatabase = new Option<string?>("--to-database")
        {
            Description = "The PostgreSQL database to move the metadata to (as kiln serve --database; it must be empty, or hold an earlier, interrupted migration of this installation).",
        };
        var toBlobs = new Option<string?>("--to-blobs") { Description = "The S3 bucket to move the blobs to (as kiln serve --blobs)." };
        var migrate = new Command("migrate", "Copy this installation's metadata and blobs to PostgreSQL and S3, check the copy, and use them from now on (server stopped; " +
            "resumable: run it again after an interruption).") { migrateData, toDatabase, toBlobs };
        migrate.SetAction(async (result, cancellationToken) =>
        {
            var directory = Path.GetFullPath(result.GetValue(migrateData)!);
            using var dataLock = DataDirectoryLock.Acquire(directory, "kiln store migrate");
            try
            {
                var report = await StoreMigration.MigrateDataDirectoryAsync(directory, result.GetValue(toDatabase), result.GetValue(toBlobs),
                    message => Console.Error.WriteLine(message), cancellationToken).ConfigureAwait(false);
                Console.Out.Write($"copied {report.BlobsCopied} blobs ({report.BytesCopied} bytes; {report.BlobsPresent} were there already) and " +
                    $"{report.Tables.Sum(t => t.Added)} rows of {report.Tables.Count(t => t.Rows > 0)} tables; {directory} now uses the new backends\n");
                if (report.Tables.Count > 0 && File.Exists(Path.Combine(directory, "kiln.db")))
                {
                    Console.Out.Write($"{Path.Combine(directory, "kiln.db")} is no longer used: remove it once 'kiln store verify' is content\n");
                }

                if (result.GetValue(toBlobs) is not null && Directory.Exists(Path.Combine(directory, "blobs")))
                {
                    Console.Out.Write($"{Path.Combine(directory, "blobs")} is no longer used: remove it once 'kiln store verify' is content\n");
                }

                return 0;
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException)
            {
                throw new CommandException(e.Message);
            }
        });

        return new Command("store", "Maintain a Kiln store offline.") { gc, verify, migrate };
    }
}
