using Kiln.Protocol.Worker;
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
public static class KilnServer
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
            builder.Services.AddHostedService<DaemonSocketService>();
            using var host = builder.Build();
            await host.RunAsync(cancellationToken).ConfigureAwait(false);
        }

        return 0;
    }
}
