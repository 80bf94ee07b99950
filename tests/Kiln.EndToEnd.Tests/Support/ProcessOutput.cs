using System.Diagnostics;
using System.Text;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>What a started process writes to stdout and stderr, collected as it arrives, and waited for by text.</summary>
public sealed class ProcessOutput
{
    private readonly StringBuilder _text = new();

    /// <summary>Starts collecting <paramref name="process"/>'s output (both streams must be redirected).</summary>
    public ProcessOutput(Process process)
    {
        ArgumentNullException.ThrowIfNull(process);
        process.OutputDataReceived += (_, e) => Append(e.Data);
        process.ErrorDataReceived += (_, e) => Append(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
    }

    public string Text
    {
        get
        {
            lock (_text)
            {
                return _text.ToString();
            }
        }
    }

    /// <summary>Waits until the output says <paramref name="text"/> (its lines arrive asynchronously); false on timeout.</summary>
    public bool WaitFor(string text, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!Text.Contains(text, StringComparison.Ordinal))
        {
            if (DateTime.UtcNow > deadline)
            {
                return false;
            }

            Thread.Sleep(20);
        }

        return true;
    }

    private void Append(string? line)
    {
        if (line is not null)
        {
            lock (_text)
            {
                _text.AppendLine(line);
            }
        }
    }
}
