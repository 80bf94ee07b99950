using Kiln.Agent;
using Kiln.Nix.Signing;
using Kiln.Protocol.Worker;
using Kiln.Scheduler;
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
        var store = await KilnStore.OpenAsync(storeOptions with { MaterialisedAccount = options.SocketAccount }, cancellationToken).ConfigureAwait(false);
        await using (store.ConfigureAwait(false))
        {
            await store.ReconcileMaterialisedAsync(cancellationToken).ConfigureAwait(false);
            var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
            builder.Logging.AddSimpleConsole(console =>
            {
                console.SingleLine = true;
                console.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fff ";
                console.ColorBehavior = LoggerColorBehavior.Disabled;
            });
            builder.Logging.SetMinimumLevel(LogLevel.Information);
            builder.Services.Configure<ConsoleLifetimeOptions>(o => o.SuppressStatusMessages = true);
            builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = options.ShutdownGrace + TimeSpan.FromSeconds(5));
            builder.Services.AddSingleton(store);
            builder.Services.AddSingleton(options);
            builder.Services.AddSingleton(new WorkerSessionOptions());
            builder.Services.AddSingleton(services => CreateScheduler(options, store, services.GetRequiredService<ILoggerFactory>()));
            builder.Services.AddHostedService<DaemonSocketService>();
            builder.Services.AddHostedService<Ssh.SshFrontDoor>();
            builder.Services.AddHostedService<HttpCacheService>();
            using var host = builder.Build();
            await host.RunAsync(cancellationToken).ConfigureAwait(false);
        }

        return 0;
    }

    private static BuildScheduler CreateScheduler(ServerOptions options, KilnStore store, ILoggerFactory loggers)
    {
        var executor = new SandboxExecutor(new SandboxOptions
        {
            WorkDirectory = options.DataDirectory,
            MaxJobs = options.MaxJobs,
            Cores = options.Cores,
            SandboxPaths = options.SandboxPaths,
        }, new LocalAgentStore(store.Blobs));
        var logger = loggers.CreateLogger("Kiln.Scheduler");
        if (executor.BuildUsersUnavailable is { } why)
        {
            LogNoBuildUsers(logger, why);
        }

        return new BuildScheduler(store, executor, new SchedulerOptions
        {
            LogDirectory = Path.Combine(options.DataDirectory, "logs"),
            Cores = options.Cores,
            MaxSilentTime = options.MaxSilentTime,
            Timeout = options.BuildTimeout,
            MaxLogSize = options.MaxLogSize,
        }, BuildKey(options.DataDirectory), logger);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "no build users: {Reason}")]
    private static partial void LogNoBuildUsers(ILogger logger, string reason);

    // Kiln's build key, created on first start: it signs what Kiln built from trusted inputs.
    private static SecretKey BuildKey(string dataDirectory)
    {
        var directory = Path.Combine(dataDirectory, "keys");
        var file = Path.Combine(directory, "build.secret");
        if (!File.Exists(file))
        {
            Directory.CreateDirectory(directory);
            var key = SecretKey.Generate($"{Environment.MachineName}-kiln-1");
            var temp = file + ".tmp";
            File.WriteAllText(temp, key.ToString(), new System.Text.UTF8Encoding(false));
            File.SetUnixFileMode(temp, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            File.Move(temp, file);
        }

        // The public half next to it, for operators and clients' trusted-public-keys (kiln client-config prints it).
        var secret = SecretKey.Parse(File.ReadAllText(file).Trim());
        var publicFile = Path.Combine(directory, "build.public");
        var publicKey = secret.PublicKey.ToString();
        if (!File.Exists(publicFile) || File.ReadAllText(publicFile).Trim() != publicKey)
        {
            File.WriteAllText(publicFile, publicKey + "\n");
        }

        return secret;
    }
}
