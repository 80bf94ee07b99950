using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Kiln.Agent;

/// <summary>
/// A pseudo-terminal in raw mode for a builder's stdout and stderr, as Nix gives its builders one (so
/// <c>[ -t 1 ]</c> holds and tools print as they would under Nix, with no newline translation). Kiln keeps the master
/// and reads the log from it; the builder gets the slave by path. Reading returns end of file once every process
/// holding the slave has gone.
/// </summary>
internal sealed partial class Pty : IDisposable
{
    private const int ORdWr = 2, ONoCtty = 0x100, OCloExec = 0x80000, EIo = 5;

    private int _slave;

    private Pty(SafeFileHandle master, string slavePath, int slave)
    {
        Master = master;
        SlavePath = slavePath;
        _slave = slave;
    }

    public SafeFileHandle Master { get; }

    public string SlavePath { get; }

    public static Pty Open()
    {
        var master = PosixOpenPt(ORdWr | ONoCtty | OCloExec);
        if (master < 0)
        {
            throw Failure("opening a pseudo-terminal");
        }

        var handle = new SafeFileHandle(master, ownsHandle: true);
        var name = new byte[128];
        if (GrantPt(master) != 0 || UnlockPt(master) != 0 || PtsNameR(master, name, name.Length) != 0)
        {
            handle.Dispose();
            throw Failure("setting up a pseudo-terminal");
        }

        var slavePath = System.Text.Encoding.ASCII.GetString(name, 0, Array.IndexOf(name, (byte)0));

        // Raw mode is a property of the terminal. Kiln keeps this slave descriptor open until the builder has
        // exited: while no process has the slave open, reading the master fails, and the builder opens it later.
        var slave = Open(slavePath, ORdWr | ONoCtty | OCloExec);
        if (slave < 0)
        {
            handle.Dispose();
            throw Failure("opening the pseudo-terminal's slave");
        }

        try
        {
            var termios = new byte[256];
            if (TcGetAttr(slave, termios) != 0)
            {
                throw Failure("reading the pseudo-terminal's settings");
            }

            CfMakeRaw(termios);
            if (TcSetAttr(slave, 0, termios) != 0)
            {
                throw Failure("setting the pseudo-terminal to raw mode");
            }
        }
        catch
        {
            _ = Close(slave);
            handle.Dispose();
            throw;
        }

        return new Pty(handle, slavePath, slave);
    }

    /// <summary>Reads what the builder wrote; 0 once no process has the slave open any more.</summary>
    public int Read(Span<byte> buffer)
    {
        while (true)
        {
            var read = ReadNative(Master, buffer, buffer.Length);
            if (read >= 0)
            {
                return (int)read;
            }

            var errno = Marshal.GetLastPInvokeError();
            if (errno == EIo)
            {
                return 0; // Linux reports a hung-up terminal as EIO
            }

            if (errno != 4)
            {
                throw new IOException($"reading the build log: {Marshal.GetPInvokeErrorMessage(errno)}");
            }
        }
    }

    /// <summary>Closes Kiln's own slave descriptor, once the builder has exited: reading then ends when the rest is read.</summary>
    public void CloseSlave()
    {
        var slave = Interlocked.Exchange(ref _slave, -1);
        if (slave >= 0)
        {
            _ = Close(slave);
        }
    }

    public void Dispose()
    {
        CloseSlave();
        Master.Dispose();
    }

    private static IOException Failure(string action) =>
        new($"{action}: {Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}");

    [LibraryImport("libc", EntryPoint = "posix_openpt", SetLastError = true)]
    private static partial int PosixOpenPt(int flags);

    [LibraryImport("libc", EntryPoint = "grantpt", SetLastError = true)]
    private static partial int GrantPt(int fd);

    [LibraryImport("libc", EntryPoint = "unlockpt", SetLastError = true)]
    private static partial int UnlockPt(int fd);

    [LibraryImport("libc", EntryPoint = "ptsname_r", SetLastError = true)]
    private static partial int PtsNameR(int fd, Span<byte> buffer, nint length);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "tcgetattr", SetLastError = true)]
    private static partial int TcGetAttr(int fd, Span<byte> termios);

    [LibraryImport("libc", EntryPoint = "tcsetattr", SetLastError = true)]
    private static partial int TcSetAttr(int fd, int optionalActions, ReadOnlySpan<byte> termios);

    [LibraryImport("libc", EntryPoint = "cfmakeraw")]
    private static partial void CfMakeRaw(Span<byte> termios);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint ReadNative(SafeFileHandle fd, Span<byte> buffer, nint count);
}
