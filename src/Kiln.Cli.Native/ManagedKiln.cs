namespace Kiln.Cli.Native;

/// <summary>
/// The managed kiln beside this one (<c>kiln-managed</c>), which runs every command the native kiln does not. It
/// replaces this process (execv) rather than running as its child: the same process id, standard streams and
/// signals, so <c>kiln serve</c> started as <c>kiln</c> is stopped by a signal to the pid its starter saw.
/// </summary>
internal static class ManagedKiln
{
    public const string FileName = "kiln-managed";

    /// <summary>
    /// Set for the managed kiln (which clears it at once): a native kiln that finds it set was itself started as
    /// kiln-managed, and handing on again would exec itself for ever.
    /// </summary>
    public const string HandedOver = "KILN_HANDED_OVER";

    /// <summary>Execs the managed kiln with <paramref name="args"/>; returns (exit code 1) only when it cannot.</summary>
    public static int Exec(string[] args)
    {
        var managed = Path.Combine(AppContext.BaseDirectory, FileName);
        if (Environment.GetEnvironmentVariable(HandedOver) is not null)
        {
            return KilnCommand.Fail($"{managed} is not the managed kiln (a native kiln is in its place): publish kiln again");
        }

        Bridge.Exec.SetForProgram(HandedOver, "1");
        var failure = Bridge.Exec.Replace([managed, .. args]);
        return KilnCommand.Fail($"cannot run {managed}: {failure}");
    }
}
