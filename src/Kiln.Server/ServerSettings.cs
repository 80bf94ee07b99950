using Kiln.Accounts;

namespace Kiln.Server;

/// <summary>The settings hierarchy's server level: kiln serve's options under the settings' names (zero: none, or the default).</summary>
internal static class ServerSettings
{
    public static IReadOnlyDictionary<string, long> Of(ServerOptions options) => new Dictionary<string, long>(StringComparer.Ordinal)
    {
        [Settings.Timeout.Name] = (long)options.BuildTimeout.TotalSeconds,
        [Settings.MaxSilentTime.Name] = (long)options.MaxSilentTime.TotalSeconds,
        [Settings.MaxBuildLogSize.Name] = options.MaxLogSize,
        [Settings.MaxCpu.Name] = options.Cores,
        [Settings.MinCpu.Name] = options.MinCores,
        [Settings.DefaultCpu.Name] = options.DefaultCores,
        [Settings.MaxMem.Name] = options.BuildMemory,
        [Settings.MinMem.Name] = options.BuildMemory > 0 ? options.MinMemory : 0,
    };
}
