using System.Globalization;

namespace Kiln.Protocol;

/// <summary>Figures as people read them, the same in the shell, the CLI and the dashboard.</summary>
public static class Units
{
    /// <summary>Bytes in binary units: 512 B, 1.5 KiB, 20.3 MiB, 1.25 GiB.</summary>
    public static string Bytes(long bytes) => bytes switch
    {
        < 1024 => $"{bytes} B",
        < 1024 * 1024 => (bytes / 1024.0).ToString("0.#", CultureInfo.InvariantCulture) + " KiB",
        < 1024L * 1024 * 1024 => (bytes / 1048576.0).ToString("0.#", CultureInfo.InvariantCulture) + " MiB",
        _ => (bytes / 1073741824.0).ToString("0.##", CultureInfo.InvariantCulture) + " GiB",
    };
}
