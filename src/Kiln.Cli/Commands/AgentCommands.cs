using System.CommandLine;
using System.Globalization;
using Kiln.Farm;
using Kiln.Store;
using Microsoft.Extensions.Logging;

namespace Kiln.Cli.Commands;

/// <summary><c>kiln agent</c> (a build agent on another machine), and the server's <c>kiln agent-token …</c> and <c>kiln agents list</c>.</summary>
internal static class AgentCommands
{
    public static Command Agent()
    {
        var server = new Option<string>("--server") { Description = "The Kiln server's HTTP address (http://HOST:PORT or https://…).", Required = true };
        var tokenFile = new Option<string>("--token") { Description = "A file holding the agent token ('kiln agent-token create' prints one).", Required = true };
        var data = new Option<string?>("--data") { Description = "The agent's directory: builds, unpacked inputs, spooled outputs (default /var/lib/kiln-agent, or ~/.local/share/kiln-agent)." };
        var name = new Option<string>("--name") { Description = "The agent's name on the server (default: this host's name).", DefaultValueFactory = _ => Environment.MachineName };
        var slots = new Option<int>("--slots") { Description = "Builds at once.", DefaultValueFactory = _ => Math.Max(1, Environment.ProcessorCount) };
        var cores = new Option<int>("--cores") { Description = "Cores this agent offers (NIX_BUILD_CORES at most this).", DefaultValueFactory = _ => Environment.ProcessorCount };
        var memory = new Option<string>("--memory") { Description = "Memory builds here may use together: SIZE (16GiB) or N% of this machine's (default 80%).", DefaultValueFactory = _ => "80%" };
        var systems = new Option<string[]>("--system") { Description = "A system this agent builds for (repeatable; default x86_64-linux).", AllowMultipleArgumentsPerToken = false };
        var features = new Option<string>("--features")
        {
            Description = "The system features it offers, comma-separated (default benchmark,big-parallel,nixos-test).",
            DefaultValueFactory = _ => "benchmark,big-parallel,nixos-test",
        };
        var sandboxPaths = new Option<string[]>("--sandbox-path") { Description = "An extra path in every build sandbox, as Nix's sandbox-paths (repeatable).", AllowMultipleArgumentsPerToken = false };
        var cgroupRoot = new Option<string>("--cgroup-root") { Description = "Where the cgroup file systems are mounted, or a delegated v2 subtree.", DefaultValueFactory = _ => "/sys/fs/cgroup" };
        var inputCache = new Option<string>("--input-cache-size")
        {
            Description = "The most bytes of unpacked inputs kept for later builds (least recently used go first): SIZE, or N% of the agent directory's file system (default 25%).",
            DefaultValueFactory = _ => "25%",
        };
        var caCert = new Option<string?>("--ca-cert") { Description = "With an https:// server: the CA certificate (PEM) its certificate must chain to, instead of the system's." };
        var fodNetwork = new Option<string>("--fod-network") { Description = "The network fixed-output builds get: 'isolated' or 'host'.", DefaultValueFactory = _ => "isolated" };
        fodNetwork.AcceptOnlyFromAmong("isolated", "host");
        var command = new Command("agent", "Run builds for a Kiln server: dial out to it, take jobs its scheduler offers, run them sandboxed here, send back logs and outputs.")
        {
            server, tokenFile, data, name, slots, cores, memory, systems, features, sandboxPaths, cgroupRoot, fodNetwork, inputCache, caCert,
        };
        command.SetAction(async (result, cancellationToken) =>
        {
            if (!Uri.TryCreate(result.GetValue(server), UriKind.Absolute, out var serverUri) || serverUri.Scheme is not ("http" or "https"))
            {
                throw new CommandException($"'{result.GetValue(server)}' is not an http:// or https:// address");
            }

            var token = File.ReadAllText(result.GetValue(tokenFile)!).Trim();
            if (!Kiln.Store.Accounts.AgentToken.LooksValid(token))
            {
                throw new CommandException($"{result.GetValue(tokenFile)} does not hold an agent token (kiln-agent_…, from 'kiln agent-token create')");
            }

            var directory = Path.GetFullPath(result.GetValue(data) ?? (Environment.IsPrivilegedProcess ? "/var/lib/kiln-agent"
                : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), "kiln-agent")));
            Directory.CreateDirectory(directory);
            using var directoryLock = DataDirectoryLock.Acquire(directory, "kiln agent");
            Kiln.Agent.SandboxExecutor? executor = null;
            var memoryBytes = ServeCommands.Size(result.GetValue(memory)!, percent => Kiln.Agent.HostMemory.TotalBytes() / 100 * percent, "this machine's memory");
            var slotCount = Math.Max(1, result.GetValue(slots));
            var coreCount = Math.Max(1, result.GetValue(cores));
            var options = new RemoteAgentOptions
            {
                Server = serverUri,
                Token = token,
                Name = result.GetValue(name)!,
                Systems = result.GetValue(systems) is { Length: > 0 } s ? s : ["x86_64-linux"],
                Features = result.GetValue(features)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries),
                Slots = slotCount,
                Cores = coreCount,
                MemoryBytes = memoryBytes,
                SpoolDirectory = Path.Combine(directory, "spool"),
                CaCertificate = result.GetValue(caCert) is { } ca ? Path.GetFullPath(ca) : null,
                InputCacheBytes = () => executor?.InputCacheBytes ?? 0,
            };
            var sandbox = new Kiln.Agent.SandboxOptions
            {
                WorkDirectory = directory,
                MaxJobs = slotCount,
                Cores = coreCount,
                SandboxPaths = result.GetValue(sandboxPaths) ?? [],
                CgroupRoot = Path.GetFullPath(result.GetValue(cgroupRoot)!),
                FixedOutputNetwork = new Kiln.Agent.FixedOutputNetworkOptions { Isolated = result.GetValue(fodNetwork) == "isolated" },
                Fetcher = Kiln.Agent.BuiltinFetcher.ForThisProcess(),
                InputCacheBytes = ServeCommands.Size(result.GetValue(inputCache)!, percent => Kiln.Agent.DiskGuard.FileSystemBytes(directory) / 100 * percent,
                    "the agent directory's file system"),
            };

            using var loggers = LoggerFactory.Create(Kiln.Server.KilnServer.ConfigureLogging);
            var agent = new RemoteAgent(options, store => new MemoryBoundExecutor(executor = new Kiln.Agent.SandboxExecutor(sandbox, store), memoryBytes), loggers.CreateLogger("Kiln.Agent"));
            await using (agent.ConfigureAwait(false))
            {
                try
                {
                    await agent.RunAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
                {
                }
            }

            return 0;
        });
        return command;
    }

    /// <summary>A build here never gets more memory than this agent offers, whatever the server's default grant.</summary>
    private sealed class MemoryBoundExecutor(Kiln.Agent.SandboxExecutor inner, long memoryBytes) : Kiln.Agent.IBuildExecutor
    {
        public int Slots => inner.Slots;

        public Task<Kiln.Agent.BuildOutcome> BuildAsync(Kiln.Agent.BuildJob job, Kiln.Agent.IBuildLog log, CancellationToken cancellationToken) =>
            inner.BuildAsync(memoryBytes > 0 && (job.Limits.MemoryBytes == 0 || job.Limits.MemoryBytes > memoryBytes)
                ? job with { Limits = job.Limits with { MemoryBytes = memoryBytes } }
                : job, log, cancellationToken);
    }

    public static Command AgentTokens()
    {
        var createName = new Argument<string>("NAME") { Description = "A name for the token (the agents using it are listed under it)." };
        var createData = AccountCommands.DataOption();
        var create = new Command("create", "Create an agent token and print it (once: only its hash is kept).") { createName, createData };
        create.SetAction(async (result, cancellationToken) =>
        {
            var tokenName = result.GetValue(createName)!;
            if (tokenName.Length is 0 or > 64 || !tokenName.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
            {
                throw new CommandException("an agent token's name is 1 to 64 letters, digits, '-', '_' or '.'");
            }

            var metadata = await AccountCommands.OpenAsync(result.GetValue(createData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var token = Kiln.Store.Accounts.AgentToken.Generate();
                if (await metadata.AddAgentTokenAsync(tokenName, Kiln.Store.Accounts.AgentToken.Hash(token), cancellationToken).ConfigureAwait(false) is null)
                {
                    throw new CommandException($"an agent token named '{tokenName}' exists already");
                }

                Console.Out.Write(token + "\n");
                return 0;
            }
        });

        var revokeName = new Argument<string>("NAME") { Description = "The token's name." };
        var revokeData = AccountCommands.DataOption();
        var revoke = new Command("revoke", "Revoke an agent token: agents using it are refused from now on (within seconds).") { revokeName, revokeData };
        revoke.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await AccountCommands.OpenAsync(result.GetValue(revokeData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                if (!await metadata.RevokeAgentTokenAsync(result.GetValue(revokeName)!, cancellationToken).ConfigureAwait(false))
                {
                    throw new CommandException($"no agent token named '{result.GetValue(revokeName)}' is in use");
                }

                Console.Out.Write($"revoked agent token {result.GetValue(revokeName)}\n");
                return 0;
            }
        });

        var listData = AccountCommands.DataOption();
        var listJson = AccountCommands.JsonOption();
        var list = new Command("list", "List agent tokens (names and dates; never the tokens).") { listData, listJson };
        list.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await AccountCommands.OpenAsync(result.GetValue(listData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var tokens = await metadata.ListAgentTokensAsync(cancellationToken).ConfigureAwait(false);
                AccountCommands.Print(result.GetValue(listJson), tokens.Select(t => new { name = t.Name, created = Time(t.Created), revoked = t.Revoked is { } r ? Time(r) : null }),
                    string.Join("\n", tokens.Select(t => $"{t.Name} created {Time(t.Created)}{(t.Revoked is { } r ? $" revoked {Time(r)}" : "")}")));
                return 0;
            }
        });

        return new Command("agent-token", "Tokens remote build agents dial in with.") { create, revoke, list };
    }

    public static Command Agents()
    {
        var data = AccountCommands.DataOption();
        var json = AccountCommands.JsonOption();
        var list = new Command("list", "List the build agents that connected: systems, features, slots in use, memory, last heartbeat, builds run, input cache.") { data, json };
        list.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await AccountCommands.OpenAsync(result.GetValue(data)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var agents = await metadata.ListAgentsAsync(cancellationToken).ConfigureAwait(false);
                AccountCommands.Print(result.GetValue(json), agents.Select(a => new
                {
                    name = a.Name,
                    token = a.TokenName,
                    connected = a.Connected,
                    systems = a.Systems,
                    features = a.Features,
                    slots = a.Slots,
                    slotsBusy = a.SlotsBusy,
                    cores = a.Cores,
                    memoryBytes = a.MemoryBytes,
                    lastSeen = Time(a.LastSeen),
                    buildsRun = a.BuildsRun,
                    inputCacheBytes = a.InputCacheBytes,
                    frontDoor = a.FrontDoor,
                }), string.Join("\n", agents.Select(a =>
                    $"{a.Name} ({(a.Connected ? "connected" : "gone")}, token {a.TokenName}): {string.Join(' ', a.Systems)} [{string.Join(',', a.Features)}], " +
                    $"{a.SlotsBusy}/{a.Slots} slots busy, {a.Cores} cores, {a.MemoryBytes >> 20} MiB, last seen {Time(a.LastSeen)}, {a.BuildsRun} builds, " +
                    $"input cache {a.InputCacheBytes >> 20} MiB")));
                return 0;
            }
        });

        return new Command("agents", "The build agents of this server.") { list };
    }

    private static string Time(long unixSeconds) => DateTimeOffset.FromUnixTimeSeconds(unixSeconds).ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture);
}
