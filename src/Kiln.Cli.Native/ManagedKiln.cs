using System.Runtime.InteropServices;

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
        string[] argv = [managed, .. args];
        var pointers = new nint[argv.Length + 1]; // the last stays null, as execv wants
        try
        {
            for (var i = 0; i < argv.Length; i++)
            {
                pointers[i] = Marshal.StringToCoTaskMemUTF8(argv[i]);
            }

            // The runtime ignores SIGPIPE, and an ignored signal stays ignored across exec: the managed kiln, and the
            // programs it starts, get it back as a stock start would leave it.
            _ = Signal(SigPipe, SigDefault);
            _ = Execv(pointers[0], pointers); // returns only when it failed
            return KilnCommand.Fail($"cannot run {managed}: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        finally
        {
            foreach (var pointer in pointers)
            {
                Marshal.FreeCoTaskMem(pointer);
            }
        }
    }

    [DllImport("libc", EntryPoint = "execv", SetLastError = true)]
    private static extern int Execv(nint path, nint[] argv);

    private const int SigPipe = 13; // the same on every Linux architecture .NET runs on
    private const nint SigDefault = 0;

    [DllImport("libc", EntryPoint = "signal")]
    private static extern nint Signal(int signal, nint handler);
}
