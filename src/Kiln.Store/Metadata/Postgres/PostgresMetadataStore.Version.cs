using Npgsql;

namespace Kiln.Store.Metadata.Postgres;

// The "records changed" version across processes: each change to a record that was there sends a notification on
// kiln_path_records from its transaction (delivered on commit, to every process listening, this one included), and
// each process counts what it hears on one connection of its own kept for listening.
public sealed partial class PostgresMetadataStore
{
    private long _pathRecordsVersion;
    private volatile bool _listening;
    private TaskCompletionSource? _firstListen;

    public long PathRecordsVersion
    {
        get
        {
            StartListening();

            // Not listening (not connected yet, or the connection broke): a change through another front door could go
            // unheard, so every read is a new version and no cache keeps a record it read now.
            return _listening ? Interlocked.Read(ref _pathRecordsVersion) : Interlocked.Increment(ref _pathRecordsVersion);
        }
    }

    // After the commit, for this process's readers at once (its own notification arrives a little later and moves the
    // version once more, which costs a cache entry, never a stale answer).
    private void PathRecordsChanged() => Interlocked.Increment(ref _pathRecordsVersion);

    private static NpgsqlCommand NotifyCommand(NpgsqlConnection connection, NpgsqlTransaction transaction) =>
        Command(connection, $"SELECT pg_notify('{Channel}', '')", transaction);

    private Task StartListening()
    {
        if (_readOnly)
        {
            return Task.CompletedTask;
        }

        lock (_listenerLock)
        {
            if (_listener is null)
            {
                _firstListen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _listener = Task.Run(() => ListenAsync(_stopping.Token));
            }

            return _firstListen!.Task;
        }
    }

    private async Task ListenAsync(CancellationToken cancellationToken)
    {
        // Its own connection outside the pool: LISTEN belongs to the session, which the pool would reset. Keepalives make
        // a connection that silently died (a network cut) fail within seconds instead of waiting for ever.
        var delay = TimeSpan.FromMilliseconds(100);
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                var connection = _unpooled.CreateConnection();
                await using (connection.ConfigureAwait(false))
                {
                    await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
                    connection.Notification += (_, _) => Interlocked.Increment(ref _pathRecordsVersion);
                    using (var listen = Command(connection, $"LISTEN {Channel}"))
                    {
                        await listen.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                    }

                    // Whatever changed while nobody listened is unknown: start from a version no cache has seen.
                    Interlocked.Increment(ref _pathRecordsVersion);
                    _listening = true;
                    _firstListen!.TrySetResult();
                    delay = TimeSpan.FromMilliseconds(100);
                    while (true)
                    {
                        await connection.WaitAsync(cancellationToken).ConfigureAwait(false);
                    }
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                break;
            }
            catch (Exception e) when (e is NpgsqlException or IOException or TimeoutException)
            {
                // The database is unreachable for now: readers see a new version each time until listening again.
                _listening = false;
                _firstListen!.TrySetResult();
                try
                {
                    await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }

                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(10).Ticks));
            }
            finally
            {
                _listening = false;
            }
        }
    }
}
