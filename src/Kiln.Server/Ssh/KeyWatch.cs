using Kiln.Store.Metadata;

namespace Kiln.Server.Ssh;

/// <summary>
/// Keeps a login's key honest for as long as its session lasts: the session's token fires when the server stops or
/// when the key is removed, disabled or given other permissions (by the operator's CLI, another process, or the
/// shell). A revoked key's live sessions end, as its new ones are refused.
/// </summary>
internal sealed class KeyWatch : IDisposable
{
    private readonly CancellationTokenSource _session;
    private readonly Task _watching;
    private readonly CancellationTokenSource _stop = new();

    public KeyWatch(IAccountMetadata accounts, SshKeyRecord key, TimeSpan interval, CancellationToken stoppingToken)
    {
        _session = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
        _watching = WatchAsync(accounts, key, interval);
    }

    /// <summary>Fires when the server stops or the key no longer stands as it did.</summary>
    public CancellationToken Token => _session.Token;

    /// <summary>Whether the session ended because its key changed.</summary>
    public bool Revoked { get; private set; }

    private async Task WatchAsync(IAccountMetadata accounts, SshKeyRecord key, TimeSpan interval)
    {
        try
        {
            while (true)
            {
                await Task.Delay(interval, _stop.Token).ConfigureAwait(false);
                var now = await accounts.GetSshKeyAsync(key.Id, _stop.Token).ConfigureAwait(false);
                if (now is null || !now.Enabled || now.Permissions != key.Permissions || now.AccountId != key.AccountId)
                {
                    Revoked = true;
                    await _session.CancelAsync().ConfigureAwait(false);
                    return;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        try
        {
            _watching.GetAwaiter().GetResult();
        }
        catch (OperationCanceledException)
        {
        }

        _stop.Dispose();
        _session.Dispose();
    }
}
