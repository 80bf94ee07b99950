namespace Kiln.Cli.Native;

/// <summary>
/// The managed kiln beside this one (<c>kiln-managed</c>), which runs every command the native kiln does not. It
/// replaces this process (execv) rather than running as its child: the same process id, standard streams and
/// signals, so <c>kiln serve</c> started as <c>kiln</c> is stopped by a signal to the pid its starter saw.
/// </summary>
internal static class ManagedKiln
{
    public const string FileName = "kiln-managed";

    /// <summary>Execs the managed kiln with <paramref name="args"/>; returns (exit code 1) only when it cannot.</summary>
    public static int Exec(string[] args)
    {
        var managed = Path.Combine(AppContext.BaseDirectory, FileName);
        if (Environment.GetEnvironmentVariable(KilnCommand.HandedOverVariable) is not null)
        {
            return KilnCommand.Fail($"{managed} is not the managed kiln (a native kiln is in its place): publish kiln again");
        }

        Bridge.Exec.SetForProgram(KilnCommand.HandedOverVariable, "1");
        var failure = Bridge.Exec.Replace([managed, .. args]);
        return KilnCommand.Fail($"cannot run {managed}: {failure}");
    }
}
