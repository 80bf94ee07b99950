using System.Collections.Concurrent;
using System.Diagnostics;

namespace Kiln.Agent;

/// <summary>
/// Starts the child processes that are told to die with their parent (bwrap's <c>--die-with-parent</c>, sshd through
/// <c>setpriv --pdeathsig</c>) from one thread that lives as long as the process.
/// </summary>
/// <remarks>
/// The kernel sends the parent-death signal when the <em>thread</em> that forked the child ends, not the process
/// (prctl(2), PR_SET_PDEATHSIG). <see cref="Process.Start(ProcessStartInfo)"/> forks from the calling thread, and a
/// thread-pool thread retires after 20 s without work: a build started from one was killed (signal 9) at a random
/// moment of a quiet server. This thread never ends, so such a child dies only with Kiln.
/// </remarks>
public static class ProcessParent
{
    private static readonly BlockingCollection<(ProcessStartInfo Start, TaskCompletionSource<Process> Started)> Requests = StartParent();

    /// <summary>Starts <paramref name="start"/> from the parent thread.</summary>
    /// <exception cref="InvalidOperationException">No process was started (what <see cref="Process.Start(ProcessStartInfo)"/> throws is passed on).</exception>
    public static Task<Process> StartAsync(ProcessStartInfo start)
    {
        ArgumentNullException.ThrowIfNull(start);
        var started = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
        Requests.Add((start, started));
        return started.Task;
    }

    private static BlockingCollection<(ProcessStartInfo, TaskCompletionSource<Process>)> StartParent()
    {
        var requests = new BlockingCollection<(ProcessStartInfo, TaskCompletionSource<Process>)>();
        var thread = new Thread(() =>
        {
            foreach (var (start, started) in requests.GetConsumingEnumerable())
            {
                try
                {
                    started.SetResult(Process.Start(start) ?? throw new InvalidOperationException($"{start.FileName} did not start"));
                }
#pragma warning disable CA1031 // handed to the caller
                catch (Exception e)
#pragma warning restore CA1031
                {
                    started.SetException(e);
                }
            }
        })
        { IsBackground = true, Name = "child process parent" };
        thread.Start();
        return requests;
    }
}
