using System.Diagnostics;
using Kiln.Nix;

namespace Kiln.Agent;

/// <summary>
/// Splits a builder's output into log lines as Nix does (a carriage return moves back to the start of the line, so
/// progress bars collapse to their last state), passes each to the build's log, keeps the last lines for the failure
/// message, and watches the log size and how long the builder has been silent. A line is kept to
/// <see cref="MaxLineBytes"/>: the rest of it, up to its end, is dropped and the line is marked as cut, so a builder
/// that never ends a line (<c>cat /dev/zero</c>) cannot grow Kiln's memory (20.1; Nix keeps the whole line).
/// </summary>
internal sealed class LogTail(long maxLogSize, IBuildLog log)
{
    public const int Lines = 25;

    /// <summary>The most of one line Kiln keeps (longer than any compiler command line seen in practice).</summary>
    public const int MaxLineBytes = 1 << 20;

    private readonly Queue<string> _last = new();
    private readonly TaskCompletionSource _limitExceeded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Stopwatch _sinceOutput = Stopwatch.StartNew();
    private readonly List<byte> _line = [];
    private int _position;
    private long _total;
    private bool _cut;

    public Task LimitExceeded => _limitExceeded.Task;

    public TimeSpan SilentFor
    {
        get
        {
            lock (_sinceOutput)
            {
                return _sinceOutput.Elapsed;
            }
        }
    }

    public IReadOnlyList<string> LastLines
    {
        get
        {
            lock (_last)
            {
                return _last.ToList();
            }
        }
    }

    public void ReadAll(Pty pty)
    {
        // From the shared pool: one per build, held while it runs (a fresh one was 64 KiB of garbage a build).
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(64 * 1024);
        try
        {
            int read;
            while ((read = pty.Read(buffer)) > 0)
            {
                lock (_sinceOutput)
                {
                    _sinceOutput.Restart();
                }

                _total += read;
                if (maxLogSize > 0 && _total > maxLogSize)
                {
                    _limitExceeded.TrySetResult();
                }

                Feed(buffer.AsSpan(0, read));
            }
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }

        if (_line.Count > 0)
        {
            Flush();
        }
    }

    private void Feed(ReadOnlySpan<byte> data)
    {
        foreach (var b in data)
        {
            switch (b)
            {
                case (byte)'\r':
                    _position = 0;
                    break;
                case (byte)'\n':
                    Flush();
                    break;
                default:
                    if (_position < _line.Count)
                    {
                        _line[_position] = b;
                    }
                    else if (_line.Count < MaxLineBytes)
                    {
                        _line.Add(b);
                    }
                    else
                    {
                        _cut = true;
                        break;
                    }

                    _position++;
                    break;
            }
        }
    }

    private void Flush()
    {
        var line = NixString.Decode(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_line));
        if (_cut)
        {
            line += " [line cut by Kiln: longer than 1 MiB]";
        }

        _line.Clear();
        _line.Capacity = Math.Min(_line.Capacity, 4096); // a long line's buffer is not kept for the rest of the build
        _position = 0;
        _cut = false;
        lock (_last)
        {
            _last.Enqueue(line);
            if (_last.Count > Lines)
            {
                _last.Dequeue();
            }
        }

        log.Line(line);
    }
}
