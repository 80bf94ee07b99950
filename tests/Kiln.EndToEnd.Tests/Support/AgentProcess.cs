using System.Diagnostics;
using System.Globalization;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// A running <c>kiln agent</c> dialled in to a <see cref="KilnProcess"/>'s HTTP front, with its own data directory;
/// stopped with SIGTERM on dispose (or killed, or frozen, by a test).
/// </summary>
public sealed class AgentProcess : IDisposable
{
    private readonly Process _process;
    private readonly ProcessOutput _output;
    private readonly TempDir _temp = new();

    /// <summary>Starts an agent named <paramref name="name"/>; with <paramref name="wait"/>, returns once the server says it connected.</summary>
    public AgentProcess(KilnProcess kiln, string token, string name, int slots = 2, IEnumerable<string>? arguments = null, bool wait = true, string? server = null)
    {
        ArgumentNullException.ThrowIfNull(kiln);
        Name = name;
        var tokenFile = _temp["token"];
        File.WriteAllText(tokenFile, token + "\n");
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[]
        {
            KilnProcess.Dll, "agent", "--server", server ?? kiln.HttpUrl, "--token", tokenFile, "--data", _temp["data"], "--name", name,
            "--slots", slots.ToString(CultureInfo.InvariantCulture),
        }.Concat(arguments ?? []))
        {
            info.ArgumentList.Add(arg);
        }

        _process = Process.Start(info)!;
        _output = new ProcessOutput(_process);
        if (wait && !kiln.WaitForLog($"agent {name} connected", TimeSpan.FromSeconds(60)))
        {
            Dispose();
            throw new InvalidOperationException($"agent {name} did not connect:\n{Log}\n{kiln.Log}");
        }
    }

    public string Name { get; }

    public bool HasExited => _process.HasExited;

    public string Log => _output.Text;

    /// <summary>Waits until the agent's log says <paramref name="text"/>; false on timeout.</summary>
    public bool WaitForLog(string text, TimeSpan timeout) => _output.WaitFor(text, timeout);

    /// <summary>Sends a signal (KILL: as a crash; STOP: as a machine that hangs or loses its network; CONT: back).</summary>
    public void Signal(string signal) => Processes.Run("kill", [$"-{signal}", _process.Id.ToString(CultureInfo.InvariantCulture)]);

    /// <summary>Waits for the agent to exit, and then for the last of its output (a timed wait does not).</summary>
    public bool WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout))
        {
            return false;
        }

        _process.WaitForExit();
        return true;
    }

    public int ExitCode => _process.ExitCode;

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                Signal("CONT");
                Signal("TERM");
                if (!_process.WaitForExit(TimeSpan.FromSeconds(30)))
                {
                    _process.Kill(entireProcessTree: true);
                    _process.WaitForExit();
                }
            }
        }
        finally
        {
            _process.Dispose();
            _temp.Dispose();
        }
    }
}
