using System.Globalization;
using Kiln.Agent;

namespace Kiln.Scheduler.Queue;

/// <summary>
/// The line a client's build log gets when a build starts on another machine (a <c>kiln agent</c> or a stock Nix
/// builder), as nixbuild.net tells its users where and with what their build runs.
/// </summary>
public static class Placement
{
    public static string Line(AgentInfo agent, BuildJob job)
    {
        ArgumentNullException.ThrowIfNull(agent);
        ArgumentNullException.ThrowIfNull(job);
        var details = new List<string>();
        if (job.Limits.Cores > 0)
        {
            details.Add(job.Limits.Cores == 1 ? "1 core" : $"{job.Limits.Cores} cores");
        }

        if (job.Limits.MemoryBytes > 0)
        {
            details.Add(Size(job.Limits.MemoryBytes));
        }

        return $"kiln: building '{job.DrvPath}' on {agent.Name}" + (details.Count == 0 ? "" : ", " + string.Join(", ", details));
    }

    // (0.# prints a whole number of GiB without a fraction.)
    private static string Size(long bytes) => bytes >= 1L << 30
        ? string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):0.#} GiB")
        : string.Create(CultureInfo.InvariantCulture, $"{bytes >> 20} MiB");
}
