using System.Globalization;

namespace Kiln.Agent;

/// <summary>This machine's memory, from which default build limits are reckoned.</summary>
public static class HostMemory
{
    /// <summary>MemTotal from /proc/meminfo, in bytes (what the kernel can give, not counting swap).</summary>
    public static long TotalBytes()
    {
        foreach (var line in File.ReadLines("/proc/meminfo"))
        {
            // "MemTotal:       24684044 kB"
            if (line.StartsWith("MemTotal:", StringComparison.Ordinal))
            {
                return long.Parse(line["MemTotal:".Length..].Replace("kB", "", StringComparison.Ordinal).Trim(), CultureInfo.InvariantCulture) * 1024;
            }
        }

        throw new IOException("/proc/meminfo does not say how much memory this machine has");
    }
}
