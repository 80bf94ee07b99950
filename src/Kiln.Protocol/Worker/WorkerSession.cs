using System.IO.Pipelines;
using Kiln.Nix;
using Kiln.Nix.Wire;
using Kiln.Protocol.Wire;
using Microsoft.Extensions.Logging;

namespace Kiln.Protocol.Worker;

/// <summary>
/// One connection speaking the Nix worker protocol (what <c>nix-daemon</c> speaks on its socket and over
/// <c>ssh-ng://</c>), from the handshake to the client's disconnect, against one view of the store.
/// <para>
/// Error discipline, as Nix's daemon: a failure while the request is still being read (a malformed store path, a
/// limit exceeded) is reported and the connection closed, since the rest of the request cannot be found; a failure
/// while the request is being worked on is reported as a Nix error and the session goes on with the next request;
/// a broken or truncated stream closes the session with a logged reason. Nothing a client sends can take the
/// server down.
/// </para>
/// </summary>
public sealed partial class WorkerSession
{
    private const ulong WorkerMagic1 = 0x6e697863;
    private const ulong WorkerMagic2 = 0x6478696f;

    private readonly IWorkerStore _store;
    private readonly IWorkerBuilder? _builder;
    // Nix's defaults stand until the client sends SetOptions, and its ssh-ng store never does (SSHStore leaves it out):
    // verbose-build is on by default, so such a client (Nix 2.3 prints only plain messages) sees build logs, as it
    // does from a stock nix-daemon.
    private ClientBuildSettings _buildSettings = new() { VerboseBuild = true };
    private readonly WorkerSessionOptions _options;
    private readonly ILogger _logger;
    private WireInput _input = null!;
    private WireOutput _output = null!;
    private ClientLogger _log = null!;
    private ProtocolVersion _version;
    private int _operations;

    public WorkerSession(IWorkerStore store, WorkerSessionOptions options, ILogger logger, IWorkerBuilder? builder = null)
    {
        _store = store ?? throw new ArgumentNullException(nameof(store));
        _builder = builder;
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _logger = logger ?? throw new ArgumentNullException(nameof(logger));
    }

    /// <summary>
    /// Serves the connection until the client leaves, the stream breaks or <paramref name="cancellationToken"/> fires.
    /// <paramref name="clientGone"/> fires when the client has gone away: a request being worked on (a build) stops;
    /// between requests the end of input ends the session as usual.
    /// </summary>
    public async Task<SessionSummary> RunAsync(PipeReader input, PipeWriter output, IFileSender? fileSender, CancellationToken cancellationToken,
        CancellationToken clientGone = default)
    {
        _input = new WireInput(input, _options.Limits);
        _output = new WireOutput(output, fileSender);
        string? closeReason = null;
        ProtocolVersion? clientVersion = null;
        try
        {
            clientVersion = await HandshakeAsync(cancellationToken).ConfigureAwait(false);
            if (clientVersion is not null)
            {
                await ServeAsync(cancellationToken, clientGone).ConfigureAwait(false);
            }
            else
            {
                closeReason = "client version too old";
            }
        }
        catch (ProtocolViolationException e)
        {
            closeReason = e.Message;
        }
        catch (WireFormatException e)
        {
            closeReason = $"malformed message: {e.Message}";
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            closeReason = SessionSummary.Cancelled;
        }
        catch (Exception e) when ((e is OperationCanceledException or IOException) && clientGone.IsCancellationRequested)
        {
            // Once the client has gone, whichever comes first (the cancelled work, or a write into the closed
            // connection) ends the session for the same reason.
            closeReason = SessionSummary.ClientGone;
        }
        catch (IOException e)
        {
            closeReason = $"connection error: {e.Message}";
        }
        catch (RequestException e)
        {
            closeReason = e.Message;
        }
#pragma warning disable CA1031 // A session must end with a reason, never with an exception into the server.
        catch (Exception e)
#pragma warning restore CA1031
        {
            LogSessionError(_logger, e);
            closeReason = $"internal error: {e.GetType().Name}";
        }

        return new SessionSummary(clientVersion, _operations, _input.BytesRead, _output.BytesWritten, closeReason);
    }

    private async Task<ProtocolVersion?> HandshakeAsync(CancellationToken cancellationToken)
    {
        var magic = await _input.ReadU64Async(cancellationToken).ConfigureAwait(false);
        if (magic != WorkerMagic1)
        {
            throw new ProtocolViolationException($"protocol mismatch (magic 0x{magic:x})");
        }

        // Reply before reading the client's version: clients up to Nix 2.23 wait for this first.
        _output.WriteU64(WorkerMagic2);
        _output.WriteU64(_options.ServerVersion.ToWire());
        await _output.FlushAsync(cancellationToken).ConfigureAwait(false);

        var client = ProtocolVersion.FromWire(await _input.ReadU64Async(cancellationToken).ConfigureAwait(false));
        if (client.Major != 1)
        {
            throw new ProtocolViolationException($"unsupported protocol major version {client.Major}");
        }

        _version = ProtocolVersion.Min(client, _options.ServerVersion);
        _log = new ClientLogger(_output, _version);

        if (_version.AtLeast(38))
        {
            await _input.ReadStringsAsync(cancellationToken).ConfigureAwait(false); // the client's features
            _output.WriteStrings([]); // Kiln implements none of the optional features
            await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
        }

        if (_version.AtLeast(14) && await _input.ReadU64Async(cancellationToken).ConfigureAwait(false) != 0)
        {
            await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // obsolete CPU affinity
        }

        if (_version.AtLeast(11))
        {
            await _input.ReadU64Async(cancellationToken).ConfigureAwait(false); // obsolete reserveSpace
        }

        if (_version.AtLeast(33))
        {
            _output.WriteString(_options.DaemonVersion);
        }

        if (_version.AtLeast(35))
        {
            _output.WriteU64((ulong)_options.Trust);
        }

        _log.StartWork();
        if (_version < _options.MinimumVersion)
        {
            _log.StopWork($"Nix client protocol {client} is too old for Kiln, which needs {_options.MinimumVersion} (Nix 2.3) or newer", 1);
            await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
            return null;
        }

        _log.StopWork();
        await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
        return client;
    }

    private async Task ServeAsync(CancellationToken cancellationToken, CancellationToken clientGone)
    {
        // Waiting for a request, only the server's stop interrupts (the client leaving is the end of input); working on
        // one, the client leaving does too.
        using var working = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, clientGone);
        while (true)
        {
            var (ok, code) = await _input.TryReadFirstAsync<ulong>(WireReader.TryReadU64, cancellationToken).ConfigureAwait(false);
            if (!ok)
            {
                return; // the client disconnected between requests
            }

            _operations++;
            var op = (WorkerOp)code;
            var ct = working.Token;
            try
            {
                await PerformAsync(op, ct).ConfigureAwait(false);
            }
            catch (Exception e) when (IsClientError(e) || StorageFailure.Describe(e) is not null)
            {
                var storage = StorageFailure.Describe(e);
                if (storage is not null)
                {
                    LogStorageFailure(_logger, op, e);
                }

                var message = storage ?? e.Message;

                if (!_log.CanSend)
                {
                    // Still reading the request: its end cannot be found, so report and close, as Nix does.
                    _log.StartWork();
                    _log.StopWork(message, StatusOf(e));
                    await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
                    throw new RequestException($"{op} request failed: {message}");
                }

                _log.StopWork(message, StatusOf(e));
            }
            catch (Exception e) when (e is not (ProtocolViolationException or OperationCanceledException or WireFormatException or IOException or RequestException))
            {
                // A bug, not the client's doing: tell the client, log it, and close, since the state is unknown.
                LogInternalError(_logger, op, e);
                if (_log.CanSend)
                {
                    _log.StopWork($"internal error in Kiln while handling {op}; see the server log", 1);
                    await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
                }

                throw new RequestException($"internal error in {op}: {e.GetType().Name}");
            }

            await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private static bool IsClientError(Exception e) => e is KilnException or NixFormatException;

    private static int StatusOf(Exception e) => e is KilnException kiln ? kiln.NixStatus : 1;

    [LoggerMessage(EventId = LogEvents.WorkerSessionFailed, Level = LogLevel.Error, Message = "internal error in a worker session")]
    private static partial void LogSessionError(ILogger logger, Exception exception);

    [LoggerMessage(EventId = LogEvents.StorageFailed, Level = LogLevel.Error, Message = "Kiln's storage failed while handling {Op}")]
    private static partial void LogStorageFailure(ILogger logger, WorkerOp op, Exception exception);

    [LoggerMessage(EventId = LogEvents.WorkerOpFailed, Level = LogLevel.Error, Message = "internal error while handling {Op}")]
    private static partial void LogInternalError(ILogger logger, WorkerOp op, Exception exception);

    /// <summary>A request that ends the session (its error has been reported to the client).</summary>
    private sealed class RequestException(string message) : Exception(message);
}
