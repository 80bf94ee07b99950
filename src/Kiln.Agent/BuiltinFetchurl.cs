using System.Reflection;
using Kiln.Nix.Nar;

namespace Kiln.Agent;

/// <summary>
/// How Kiln runs the one program Nix builds in: <c>builtin:fetchurl</c>. Nix runs it in the forked process that would
/// have run the builder, inside the fixed-output sandbox; Kiln runs its own <c>kiln builtin-fetchurl</c> in the same
/// sandbox a fixed-output builder gets (its own network, the build user, the syscall filter), never in the server,
/// which is root and sits on every network the host has. Only the program's files and the system's libraries are
/// added to the sandbox, read-only.
/// </summary>
public sealed record BuiltinFetcher(IReadOnlyList<string> Command, IReadOnlyList<string> ReadOnlyPaths, string? DotnetRoot = null)
{
    /// <summary>The CLI command that downloads (see <see cref="BuiltinFetchurl"/>).</summary>
    public const string CommandName = "builtin-fetchurl";

    /// <summary>The variable that tells the fetcher its size cap (set by Kiln after the derivation's own are filtered out).</summary>
    public const string MaxBytesVariable = "KILN_FETCH_MAX_BYTES";

    /// <summary>The most one download may bring (4 GiB unless the operator says otherwise).</summary>
    public long MaxDownloadBytes { get; init; } = 4L << 30;

    private static readonly string[] SystemPaths = ["/usr", "/lib", "/lib64", "/bin", "/etc/ssl", "/etc/ca-certificates", "/etc/pki"];

    /// <summary>This running Kiln as the fetcher: <c>dotnet kiln.dll builtin-fetchurl</c>, or the published <c>kiln builtin-fetchurl</c>.</summary>
    public static BuiltinFetcher ForThisProcess()
    {
        var process = Environment.ProcessPath ?? throw new InvalidOperationException("no process path");
        var application = Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory);
        // The .NET installation this process runs on (…/shared/Microsoft.NETCore.App/<version>/ → its root), which a
        // published kiln finds through DOTNET_ROOT when it is not where the system keeps it.
        var root = Path.GetFullPath(Path.Combine(System.Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));
        if (Path.GetFileName(process) == "dotnet")
        {
            var entry = Assembly.GetEntryAssembly()?.Location ?? throw new InvalidOperationException("no entry assembly");
            return new BuiltinFetcher([process, entry, CommandName], [.. SystemPaths, root, Path.GetDirectoryName(process)!, application], root);
        }

        return new BuiltinFetcher([process, CommandName], [.. SystemPaths, root, application], root);
    }

    /// <summary>What the sandbox runs for a built-in builder: this program, with the .NET settings and Kiln's cap it needs.</summary>
    internal SandboxLayout.Command SandboxCommand() => new(Command[0], Command.Skip(1).ToList(), ReadOnlyPaths, new Dictionary<string, string>
    {
        // No ICU in the sandbox's view of the system is needed for downloading.
        ["DOTNET_SYSTEM_GLOBALIZATION_INVARIANT"] = "1",
        ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
        ["DOTNET_gcServer"] = "0",
        ["DOTNET_ROOT"] = DotnetRoot ?? "",
        [MaxBytesVariable] = MaxDownloadBytes.ToString(System.Globalization.CultureInfo.InvariantCulture),
    });

    /// <summary>Why Kiln cannot build this built-in derivation (checked before any sandbox starts), or null.</summary>
    internal static string? Refusal(BuildJob job)
    {
        var derivation = job.Derivation;
        return derivation.Builder switch
        {
            "builtin:fetchurl" when !derivation.IsFixedOutput => "'builtin:fetchurl' must be a fixed-output or impure derivation",
            "builtin:fetchurl" => null,
            _ => $"unsupported builtin builder '{derivation.Builder}'",
        };
    }
}

/// <summary>
/// <c>builtin:fetchurl</c> itself, run as the builder of a fixed-output sandbox: downloads <c>url</c> to <c>out</c>
/// (as a file, made executable with <c>executable = "1"</c>, or unpacked as a NAR with <c>unpack = "1"</c>), all
/// read from the environment as the derivation gives them. The fixed-output hash check that follows every
/// fixed-output build decides whether the download is right, as in Nix. Bounded (20.1): a body stops at Kiln's size cap
/// and when no byte came for <see cref="StallTimeout"/> (Nix's <c>stalled-download-timeout</c> default).
/// </summary>
public static class BuiltinFetchurl
{
    public static readonly TimeSpan StallTimeout = TimeSpan.FromSeconds(300);

    /// <summary>Downloads; returns the exit status (0, or 1 with the reason written to <paramref name="log"/>).</summary>
    public static async Task<int> RunAsync(Func<string, string?> environment, TextWriter log, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(environment);
        ArgumentNullException.ThrowIfNull(log);
        if (environment("url") is not { } url || environment("out") is not { } output)
        {
            await log.WriteLineAsync("error: attribute 'url' missing").ConfigureAwait(false);
            return 1;
        }

        using var http = new HttpClient(new SocketsHttpHandler { AutomaticDecompression = System.Net.DecompressionMethods.None }) { Timeout = TimeSpan.FromMinutes(30) };
        try
        {
            await log.WriteLineAsync($"downloading '{url}'...").ConfigureAwait(false);
            using var response = await http.GetAsync(new Uri(url), HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                await log.WriteLineAsync($"error: unable to download '{url}': HTTP error {(int)response.StatusCode}").ConfigureAwait(false);
                return 1;
            }

            var maxBytes = long.TryParse(environment(BuiltinFetcher.MaxBytesVariable), out var cap) && cap > 0 ? cap : long.MaxValue;
            if (response.Content.Headers.ContentLength > maxBytes)
            {
                await log.WriteLineAsync($"error: unable to download '{url}': it is {response.Content.Headers.ContentLength} bytes, more than this Kiln allows ({maxBytes})").ConfigureAwait(false);
                return 1;
            }

            await using var body = new GuardedBody(await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false), maxBytes, StallTimeout);
            if (environment("unpack") == "1")
            {
                NarExtractor.Restore(body, output);
            }
            else
            {
                await using (var file = File.Create(output))
                {
                    await body.CopyToAsync(file, cancellationToken).ConfigureAwait(false);
                }

                if (environment("executable") == "1")
                {
                    File.SetUnixFileMode(output, (UnixFileMode)Convert.ToInt32("755", 8));
                }
            }

            return 0;
        }
        catch (Exception e) when (e is HttpRequestException or IOException or UriFormatException or TaskCanceledException or Kiln.Nix.NixFormatException)
        {
            await log.WriteLineAsync($"error: unable to download '{url}': {e.Message}").ConfigureAwait(false);
            return 1;
        }
    }

    // A download's body, stopped when it passes the size cap or stalls.
    private sealed class GuardedBody(Stream inner, long maxBytes, TimeSpan stall) : Stream
    {
        private long _read;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => _read; set => throw new NotSupportedException(); }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(stall);
            int read;
            try
            {
                read = await inner.ReadAsync(buffer, timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new IOException($"no data came for {stall.TotalSeconds:F0} s");
            }

            _read += read;
            return _read > maxBytes ? throw new IOException($"it is more than this Kiln allows ({maxBytes} bytes)") : read;
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        // The NAR unpacker reads synchronously; this process does nothing else meanwhile.
        public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                inner.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
