using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using Kiln.Protocol;
using Kiln.Protocol.Wire;
using Kiln.Protocol.Worker;
using Kiln.Store;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kiln.Server;

/// <summary>
/// Listens on the daemon's unix socket and serves each connection as a worker-protocol session against the socket
/// account's view, logging one line per session. On stop it closes the socket, cancels the sessions and waits a
/// little for them to end.
/// </summary>
public sealed partial class DaemonSocketService(KilnStore store, ServerOptions options, WorkerSessionOptions sessionOptions, Kiln.Scheduler.BuildScheduler scheduler, ILogger<DaemonSocketService> logger)
    : BackgroundService
{
    private long _nextSession;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var path = options.EffectiveSocketPath;
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        if (File.Exists(path))
        {
            File.Delete(path); // a stale socket: the data directory lock says no other server owns it
        }

        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        File.SetUnixFileMode(path, options.SocketMode);
        listener.Listen(128);
        LogListening(logger, path, options.SocketAccount, store.Materialised?.Root ?? "-");

        await SocketListener.AcceptAllAsync(listener, path, client => ServeAsync(Interlocked.Increment(ref _nextSession), client, stoppingToken),
            options.ShutdownGrace, stoppingToken).ConfigureAwait(false);
    }

    private async Task ServeAsync(long id, Socket socket, CancellationToken stoppingToken)
    {
        var watch = Stopwatch.StartNew();
        SessionSummary? summary = null;
        try
        {
            using (socket)
            {
                var peer = PeerCredentials.Of(socket);
                using var view = await store.OpenViewAsync(options.SocketAccount, stoppingToken, peer?.FileSystemRoot()).ConfigureAwait(false);
                summary = await RunWorkerSessionAsync(socket, view, sessionOptions, scheduler, logger, stoppingToken).ConfigureAwait(false);
            }
        }
#pragma warning disable CA1031 // A session's failure must never reach the listener: log it and go on.
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogSessionFailed(logger, id, e);
            return;
        }

        var version = summary.ClientVersion?.ToString() ?? "-";
        var reason = summary.CloseReason ?? "client disconnected";
        LogSession(logger, id, options.SocketAccount, version, summary.Operations, summary.BytesIn, summary.BytesOut, watch.Elapsed.TotalSeconds, reason);
    }

    /// <summary>Serves one worker-protocol session on a connected socket against <paramref name="view"/>, until the client leaves.</summary>
    internal static Task<SessionSummary> RunWorkerSessionAsync(Socket socket, StoreView view, WorkerSessionOptions sessionOptions,
        Kiln.Scheduler.BuildScheduler scheduler, ILogger logger, CancellationToken stoppingToken, IReadOnlyList<Kiln.Store.Metadata.BuildTag>? tags = null,
        Kiln.Scheduler.SessionLimits? limits = null) =>
        RunOverConnectionAsync(socket, KilnMetrics.Protocols.Worker, (reader, writer, clientGone) =>
            new WorkerSession(view, sessionOptions, logger, scheduler.ForSession(view, tags, limits)).RunAsync(reader, writer, new SocketFileSender(socket), stoppingToken, clientGone));

    /// <summary>
    /// Runs a protocol session over a connection (both protocols read and write this way), giving it the token that
    /// fires when the client goes away, so a request (a build) nobody waits for any more is cancelled.
    /// </summary>
    internal static async Task<SessionSummary> RunOverConnectionAsync(Socket socket, string protocol, Func<PipeReader, PipeWriter, CancellationToken, Task<SessionSummary>> session)
    {
        var tag = KilnMetrics.ProtocolTag(protocol);
        KilnMetrics.Sessions.Add(1, tag);
        KilnMetrics.SessionsOpen.Add(1, tag);
        try
        {
            var connection = new Connection(socket);
            await using (connection.ConfigureAwait(false))
            {
                var summary = await session(connection.Input, connection.Output, connection.Closed).ConfigureAwait(false);
                KilnMetrics.BytesReceived.Add(summary.BytesIn, tag);
                KilnMetrics.BytesSent.Add(summary.BytesOut, tag);
                return summary;
            }
        }
        finally
        {
            KilnMetrics.SessionsOpen.Add(-1, tag);
        }
    }

    [LoggerMessage(EventId = LogEvents.SocketListening, Level = LogLevel.Information,
        Message = "listening on {Path} (worker protocol, account {Account}); clients use --store 'unix://{Path}?root={Root}'")]
    private static partial void LogListening(ILogger logger, string path, string account, string root);

    [LoggerMessage(EventId = LogEvents.SocketSession, Level = LogLevel.Information,
        Message = "session {Id} account={Account} client={Version} ops={Ops} in={BytesIn} out={BytesOut} seconds={Seconds:F2} end: {Reason}")]
    private static partial void LogSession(ILogger logger, long id, string account, string version, int ops, long bytesIn, long bytesOut, double seconds, string reason);

    [LoggerMessage(EventId = LogEvents.SocketSessionFailed, Level = LogLevel.Error, Message = "session {Id} failed")]
    private static partial void LogSessionFailed(ILogger logger, long id, Exception exception);

    /// <summary>NarFromPath by sendfile on the session's socket.</summary>
    internal sealed class SocketFileSender(Socket socket) : IFileSender
    {
        public async ValueTask SendFileAsync(FileStream file, long length, CancellationToken cancellationToken)
        {
            // SendPackets sends a file element with sendfile(2); an element is at most 2 GiB.
            using var send = new SocketAsyncEventArgs();
            send.Completed += static (_, e) => ((TaskCompletionSource<SocketError>)e.UserToken!).TrySetResult(e.SocketError);
            for (long sent = 0; sent < length;)
            {
                var chunk = (int)Math.Min(length - sent, 1L << 30);
                send.SendPacketsElements = [new SendPacketsElement(file, sent, chunk, endOfPacket: false)];
                var done = new TaskCompletionSource<SocketError>(TaskCreationOptions.RunContinuationsAsynchronously);
                send.UserToken = done;
                var error = socket.SendPacketsAsync(send) ? await done.Task.WaitAsync(cancellationToken).ConfigureAwait(false) : send.SocketError;
                if (error != SocketError.Success)
                {
                    throw new IOException($"sending a NAR failed ({error})", new SocketException((int)error));
                }

                sent += chunk;
            }
        }
    }
}
