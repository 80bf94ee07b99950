using Kiln.Accounts;
using Kiln.Agent;
using Kiln.Protocol;
using Kiln.Protocol.Worker;
using Kiln.Scheduler;
using Kiln.Scheduler.Queue;
using Kiln.Store;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;

namespace Kiln.Server;

/// <summary>
/// Composes <c>kiln serve</c>: one long-lived process (Generic Host) owning the data directory, the store and the
/// daemon socket. It stops cleanly on SIGTERM and SIGINT.
/// </summary>
public static partial class KilnServer
{
    public static async Task<int> RunAsync(ServerOptions options, StoreOptions storeOptions, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(options);
        using var dataLock = DataDirectoryLock.Acquire(options.DataDirectory, "kiln serve");
        using var loggers = LoggerFactory.Create(ConfigureLogging);
        var store = await KilnStore.OpenAsync(storeOptions with { MaterialisedAccount = options.SocketAccount, Logger = loggers.CreateLogger("Kiln.Store") },
            cancellationToken).ConfigureAwait(false);
        await using (store.ConfigureAwait(false))
        {
            await store.ReconcileMaterialisedAsync(cancellationToken).ConfigureAwait(false);
            var logger = loggers.CreateLogger("Kiln.Scheduler");

            // This front door's name in step claims: the same at every start, so what a previous run held is released
            // here, and its builds (with those of any front door whose claims lapsed) are recorded as failed. A random
            // id kept in the data directory: host names and paths repeat across containers.
            var frontDoor = DataDirectoryBindings.Read(options.DataDirectory, "front-door");
            if (frontDoor is null)
            {
                frontDoor = $"{Environment.MachineName}-{Guid.NewGuid():N}";
                DataDirectoryBindings.Write(options.DataDirectory, "front-door", frontDoor);
            }
            await store.Builds.ReleaseStepClaimsAsync(frontDoor, null, cancellationToken).ConfigureAwait(false);
            await store.ShareTempRootsAsync(frontDoor, cancellationToken).ConfigureAwait(false);
            var abandoned = await store.Builds.AbandonRunningBuildsAsync("the Kiln server stopped while it ran", DateTimeOffset.UtcNow.ToUnixTimeSeconds(), cancellationToken)
                .ConfigureAwait(false);
            if (abandoned > 0)
            {
                LogAbandoned(logger, abandoned);
            }

            var buildKey = await ServiceKeys.BuildKeyAsync(options.DataDirectory, store.Settings, cancellationToken).ConfigureAwait(false);
            if (options.SshListen is not null)
            {
                await ServiceKeys.ShareHostKeyAsync(options.SshDirectory, store.Settings, cancellationToken).ConfigureAwait(false);
            }

            // Credentials kept before they were sealed at rest are sealed now (a quick pass over the accounts).
            await store.SealLegacyCredentialsAsync(cancellationToken).ConfigureAwait(false);
            var accounts = new AccountService(store.Accounts, store.Settings, new SshKeygenProofs(), AccountService.InstanceName(buildKey.PublicKey));
            store.AccountPolicy = new SettingsAccountPolicy(store.Settings, ServerSettings.Of(options));

            // The embedded agent pulls work from the queue as a remote agent will; the scheduler only offers it.
            Kiln.Farm.AgentGateway? gateway = null;
            using var queue = new InMemoryJobQueue(options.AgentTimeout)
            {
                PlacementWait = options.AgentWait,
                Affinity = (agent, offer) => gateway?.CachedBytes(agent, offer) ?? 0, // what remote agents hold already
            };
            using var metrics = new Observability.ServerMetrics(store, queue);
            metrics.Start();
            var executor = CreateExecutor(options, store, logger);
            gateway = new Kiln.Farm.AgentGateway(queue, store.Agents, store.Blobs, new Kiln.Farm.AgentGatewayOptions
            {
                FrontDoor = frontDoor,
                AgentTimeout = options.AgentTimeout,
                MaxNarSize = store.Options.MaxNarSize,
            }, loggers.CreateLogger("Kiln.Farm"));
            await using var gatewayDisposal = gateway.ConfigureAwait(false);
            var scheduler = new BuildScheduler(store.Builds, store.Blobs, queue, store.Logs, new SchedulerOptions
            {
                Cores = options.Cores,
                MinCores = options.MinCores,
                DefaultCores = options.DefaultCores,
                MaxSilentTime = options.MaxSilentTime,
                Timeout = options.BuildTimeout,
                MaxLogSize = options.MaxLogSize,
                BuildMemory = options.BuildMemory,
                MinMemory = options.MinMemory,
                DefaultMemory = options.DefaultMemory,
                BuildProcesses = options.BuildProcesses,
                BuildDisk = options.BuildDisk,
                FrontDoor = frontDoor,
                ClaimLease = options.StepClaimLease,
            }, buildKey, logger)
            { Pushes = store.Pushes, Board = store.Builds.SharedByFrontDoors ? store.Board : null };
            using var stopClaims = new CancellationTokenSource();
            var claims = scheduler.KeepClaimsAsync(stopClaims.Token);
            var board = scheduler.ShareQueueAsync(stopClaims.Token, () => SchedulerControl.FarmOf(queue).ToBoard());
            var localSlots = options.LocalSlots ?? executor.Slots;
            var agent = localSlots > 0
                ? new EmbeddedAgent(queue, executor, EmbeddedAgentInfo(options, localSlots), loggers.CreateLogger("Kiln.Agent"), queue.LeaseDuration / 4)
                : null;
            var stockBuilders = new Kiln.Farm.StockNix.StockBuilders(queue, store.Agents, store.Blobs, Path.Combine(options.DataDirectory, "builders"),
                queue.LeaseDuration / 4, store.Options.MaxNarSize, loggers.CreateLogger("Kiln.Farm"));
            try
            {
                var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
                ConfigureLogging(builder.Logging);
                builder.Services.Configure<ConsoleLifetimeOptions>(o => o.SuppressStatusMessages = true);
                builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = options.ShutdownGrace + TimeSpan.FromSeconds(5));
                builder.Services.AddSingleton(store);
                builder.Services.AddSingleton(options);
                builder.Services.AddSingleton(new WorkerSessionOptions());
                builder.Services.AddSingleton(scheduler);
                builder.Services.AddSingleton(queue);
                builder.Services.AddSingleton(executor);
                builder.Services.AddSingleton(accounts);
                builder.Services.AddSingleton(gateway);
                builder.Services.AddHostedService<DaemonSocketService>();
                builder.Services.AddSingleton<Ssh.SshFrontDoor>();
                builder.Services.AddHostedService(services => services.GetRequiredService<Ssh.SshFrontDoor>());
                builder.Services.AddHostedService<HttpCacheService>();
                builder.Services.AddHostedService<BlobSweepService>();
                builder.Services.AddHostedService<GcService>();
                builder.Services.AddHostedService<StorageSampler>();
                builder.Services.AddHostedService<PushService>();
                builder.Services.AddHostedService<MemoryTrimmer>();
                using var host = builder.Build();
                await host.RunAsync(cancellationToken).ConfigureAwait(false);

                // Stopped accepting; sessions were told to end, so the builds nobody waits for are being cancelled. Let
                // them record how they ended before the agent stops (aborting what is left) and the store closes.
                await DrainAsync(scheduler, options.ShutdownGrace).ConfigureAwait(false);
            }
            finally
            {
                await stockBuilders.DisposeAsync().ConfigureAwait(false);
                if (agent is not null)
                {
                    await agent.DisposeAsync().ConfigureAwait(false);
                }
            }

            await DrainAsync(scheduler, TimeSpan.FromSeconds(5)).ConfigureAwait(false);
            await stopClaims.CancelAsync().ConfigureAwait(false);
            await claims.ConfigureAwait(false);
            await board.ConfigureAwait(false);
        }

        return 0;
    }

    public static void ConfigureLogging(ILoggingBuilder logging)
    {
        logging.AddSimpleConsole(console =>
        {
            console.SingleLine = true;
            console.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fff ";
            console.ColorBehavior = LoggerColorBehavior.Disabled;
        });
        logging.SetMinimumLevel(LogLevel.Information);
    }

    private static async Task DrainAsync(BuildScheduler scheduler, TimeSpan grace)
    {
        try
        {
            await scheduler.DrainAsync().WaitAsync(grace).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // The agent's disposal cancels what is still running.
        }
    }

    private static SandboxExecutor CreateExecutor(ServerOptions options, KilnStore store, ILogger logger)
    {
        var executor = new SandboxExecutor(new SandboxOptions
        {
            WorkDirectory = options.DataDirectory,
            MaxJobs = options.MaxJobs,
            Cores = options.Cores,
            SandboxPaths = options.SandboxPaths,
            FixedOutputNetwork = options.FixedOutputNetwork,
            Fetcher = options.Fetcher,
            CgroupRoot = options.CgroupRoot,
            MinFreeDisk = options.MinFreeDisk,
        }, new LocalAgentStore(store.Blobs));
        if (executor.BuildUsersUnavailable is { } why)
        {
            LogNoBuildUsers(logger, why);
        }

        if (executor.FixedOutputNetworkNote is { } note)
        {
            LogNetworkHelperAsRoot(logger, note);
        }

        if (executor.LauncherNote is { } slower)
        {
            LogLauncherMissing(logger, slower);
        }

        if (executor.ResourceLimitsNote is { } unbounded)
        {
            LogBuildsUnbounded(logger, unbounded);
        }

        return executor;
    }

    // What the embedded agent builds: this machine's system, with Nix's default system features (minus kvm and
    // uid-range, which Kiln's sandbox does not provide).
    private static AgentInfo EmbeddedAgentInfo(ServerOptions options, int slots) =>
        new("embedded", new SortedSet<string>(options.Systems, StringComparer.Ordinal), new SortedSet<string>(options.SystemFeatures, StringComparer.Ordinal), slots);

    [LoggerMessage(EventId = LogEvents.BuildsUnbounded, Level = LogLevel.Warning, Message = "{Note}")]
    private static partial void LogBuildsUnbounded(ILogger logger, string note);

    [LoggerMessage(EventId = LogEvents.LauncherMissing, Level = LogLevel.Warning, Message = "{Note}")]
    private static partial void LogLauncherMissing(ILogger logger, string note);

    [LoggerMessage(EventId = LogEvents.NetworkHelperAsRoot, Level = LogLevel.Warning, Message = "{Note}")]
    private static partial void LogNetworkHelperAsRoot(ILogger logger, string note);

    [LoggerMessage(EventId = LogEvents.BuildsAbandoned, Level = LogLevel.Warning, Message = "{Count} builds were still running when the server last stopped; recorded as failed")]
    private static partial void LogAbandoned(ILogger logger, int count);

    [LoggerMessage(EventId = LogEvents.NoBuildUsers, Level = LogLevel.Error, Message = "builds are refused: Kiln runs as root and build users cannot work: {Reason}")]
    private static partial void LogNoBuildUsers(ILogger logger, string reason);
}
