using System.Runtime.InteropServices;

namespace Kiln.Bridge;

/// <summary>
/// A program taking this process's place (execv): the same process id, standard streams and status. Also compiled into
/// the native kiln (Kiln.Cli.Native), which hands the commands it does not run to the managed kiln this way.
/// </summary>
internal static class Exec
{
    /// <summary>Runs <paramref name="argv"/> (argv[0] the program's path) in this process; returns only when that failed, with why.</summary>
    public static string Replace(string[] argv)
    {
        var pointers = new nint[argv.Length + 1]; // the last stays null, as execv wants
        try
        {
            for (var i = 0; i < argv.Length; i++)
            {
                pointers[i] = Marshal.StringToCoTaskMemUTF8(argv[i]);
            }

            // The runtime ignores SIGPIPE, and an ignored signal stays ignored across exec: the program gets it back.
            _ = Signal(SigPipe, SigDefault);
            _ = Execv(pointers[0], pointers); // returns only when it failed
            return Marshal.GetLastPInvokeErrorMessage();
        }
        finally
        {
            foreach (var pointer in pointers)
            {
                Marshal.FreeCoTaskMem(pointer);
            }
        }
    }

    /// <summary>
    /// Sets <paramref name="name"/> in the environment the next <see cref="Replace"/> passes on (execv passes the C
    /// library's environment; .NET's Environment.SetEnvironmentVariable changes only the runtime's own copy).
    /// </summary>
    public static void SetForProgram(string name, string value)
    {
        if (SetEnv(name, value, 1) != 0)
        {
            throw new InvalidOperationException($"cannot set {name}: {Marshal.GetLastPInvokeErrorMessage()}");
        }
    }

    [DllImport("libc", EntryPoint = "setenv", SetLastError = true)]
    private static extern int SetEnv([MarshalAs(UnmanagedType.LPUTF8Str)] string name, [MarshalAs(UnmanagedType.LPUTF8Str)] string value, int overwrite);

    [DllImport("libc", EntryPoint = "execv", SetLastError = true)]
    private static extern int Execv(nint path, nint[] argv);

    private const int SigPipe = 13; // the same on every Linux architecture .NET runs on
    private const nint SigDefault = 0;

    [DllImport("libc", EntryPoint = "signal")]
    private static extern nint Signal(int signal, nint handler);
}
