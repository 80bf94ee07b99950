using System.Collections.Concurrent;
using System.Net.Sockets;

namespace Kiln.Server;

/// <summary>The accept loop both of Kiln's unix sockets share.</summary>
internal static class SocketListener
{
    /// <summary>
    /// Accepts connections on a bound, listening socket until <paramref name="stoppingToken"/> fires, serving each
    /// on the thread pool; then closes the socket, deletes its file and gives running sessions
    /// <paramref name="grace"/> to finish.
    /// </summary>
    public static async Task AcceptAllAsync(Socket listener, string path, Func<Socket, Task> serve, TimeSpan grace, CancellationToken stoppingToken)
    {
        var sessions = new ConcurrentDictionary<long, Task>();
        long next = 0;
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                Socket client;
                try
                {
                    client = await listener.AcceptAsync(stoppingToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }

                var id = ++next;
                var session = Task.Run(() => serve(client), CancellationToken.None);
                sessions[id] = session;
                _ = session.ContinueWith(_ => sessions.TryRemove(id, out Task? _), TaskScheduler.Default);
            }
        }
        finally
        {
            listener.Close();
            File.Delete(path);
            await Task.WhenAny(Task.WhenAll(sessions.Values), Task.Delay(grace, CancellationToken.None)).ConfigureAwait(false);
        }
    }
}
