namespace Kiln.Agent;

/// <summary>
/// Nix's words for a build stopped by a limit. The agent uses them for the limits a build runs under (the operator's);
/// the scheduler uses them for a session that gives up on a shared build under tighter limits of its own.
/// </summary>
public static class LimitMessages
{
    /// <summary>Nix's name for the goal: <c>building of '/nix/store/…drv!out,dev' from .drv file</c>.</summary>
    public static string Goal(BuildJob job)
    {
        ArgumentNullException.ThrowIfNull(job);
        return $"building of '{job.DrvPath}!{string.Join(',', job.Derivation.Outputs.Keys)}' from .drv file";
    }

    public static string TimedOut(BuildJob job, TimeSpan timeout) => $"{Goal(job)} timed out after {(long)timeout.TotalSeconds} seconds";

    public static string Silent(BuildJob job, TimeSpan maxSilentTime) => $"{Goal(job)} timed out after {(long)maxSilentTime.TotalSeconds} seconds of silence";

    public static string DiskLimit(BuildJob job, long used, long limit) =>
        $"{Goal(job)} was stopped after writing {Mib(used)} MiB to disk, more than its limit of {Mib(limit)} MiB (its outputs and whatever else it leaves in /nix/store count)";

    public static string DiskShort(BuildJob job, long used) =>
        $"{Goal(job)} was stopped because Kiln's disk is nearly full and this build had written the most to it ({Mib(used)} MiB); it can be built again once there is space";

    public static string DiskUncountable(BuildJob job, TimeSpan deadline) =>
        $"{Goal(job)} was stopped because Kiln could not count what it wrote to disk within {(long)deadline.TotalSeconds} seconds (too many files)";

    private static string Mib(long bytes) => (bytes / (1024 * 1024)).ToString(System.Globalization.CultureInfo.InvariantCulture);

    public static string LogTooLong(BuildJob job, long maxLogSize) => $"{Goal(job)} killed after writing more than {maxLogSize} bytes of log output";
}
