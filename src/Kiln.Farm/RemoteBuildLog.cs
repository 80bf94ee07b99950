using System.Text.Json;
using System.Threading.Channels;
using Kiln.Agent;

namespace Kiln.Farm;

/// <summary>
/// A build's log on its way to the server: lines are batched (what arrived while the last batch was sent goes in the
/// next), so a chatty build costs a request per batch, not per line, and a quiet one shows each line at once.
/// </summary>
internal sealed class RemoteBuildLog : IBuildLog, IAsyncDisposable
{
    private const int MaxBatchLines = 2000;

    // Well under the server's bound for a log message (8 MiB), even with JSON escapes (a line is at most 1 MiB).
    private const int MaxBatchChars = 1 << 20;

    private readonly RemoteAgent _agent;
    private readonly string _lease;
    private readonly Channel<string?> _lines = Channel.CreateUnbounded<string?>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Task _pump;

    public RemoteBuildLog(RemoteAgent agent, string lease)
    {
        _agent = agent;
        _lease = lease;
        _pump = Task.Run(PumpAsync);
    }

    // null in the channel: the build began.
    public void Running() => _lines.Writer.TryWrite(null);

    public void Line(string line) => _lines.Writer.TryWrite(line);

    private async Task PumpAsync()
    {
        var reader = _lines.Reader;
        while (await reader.WaitToReadAsync().ConfigureAwait(false))
        {
            var running = false;
            var batch = new List<string>();
            var chars = 0;
            while (batch.Count < MaxBatchLines && chars < MaxBatchChars && reader.TryRead(out var line))
            {
                if (line is null)
                {
                    running = true;
                }
                else
                {
                    batch.Add(line);
                    chars += line.Length;
                }
            }

            await SendAsync(new LogMessage(running, batch)).ConfigureAwait(false);
        }
    }

    private async Task SendAsync(LogMessage message)
    {
        var content = JsonSerializer.SerializeToUtf8Bytes(message, AgentJson.Default.LogMessage);
        for (var attempt = 0; attempt < 5; attempt++)
        {
            try
            {
                using var response = await _agent.SendAsync(HttpMethod.Post, $"leases/{_lease}/log", RemoteAgent.Json(content), TimeSpan.FromSeconds(30), CancellationToken.None)
                    .ConfigureAwait(false);
                if (response.StatusCode == System.Net.HttpStatusCode.Gone)
                {
                    return; // the lease is over: nobody reads this log any more
                }

                await RemoteAgent.EnsureSuccessAsync(response, CancellationToken.None).ConfigureAwait(false);
                return;
            }
            catch (Exception e) when (RemoteAgent.IsTransient(e, CancellationToken.None))
            {
                await Task.Delay(TimeSpan.FromSeconds(1 << attempt)).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Sends what is left.</summary>
    public async ValueTask DisposeAsync()
    {
        _lines.Writer.TryComplete();
        await _pump.ConfigureAwait(false);
    }
}
