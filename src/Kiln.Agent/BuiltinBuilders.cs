using Kiln.Nix.Nar;

namespace Kiln.Agent;

/// <summary>
/// The builders Nix has built in. <c>builtin:fetchurl</c> downloads <c>url</c> to the output (as a file, made
/// executable with <c>executable = "1"</c>, or unpacked as a NAR with <c>unpack = "1"</c>); the fixed-output hash
/// check that follows every fixed-output build decides whether the download is right, as in Nix.
/// </summary>
internal static class BuiltinBuilders
{
    private static readonly HttpClient Http = new(new SocketsHttpHandler { AutomaticDecompression = System.Net.DecompressionMethods.None })
    {
        Timeout = TimeSpan.FromMinutes(30),
    };

    public static async Task<BuildOutcome> RunAsync(BuildJob job, string storeDir, IBuildLog log, CancellationToken cancellationToken)
    {
        var derivation = job.Derivation;
        switch (derivation.Builder)
        {
            case "builtin:fetchurl":
                if (!derivation.IsFixedOutput)
                {
                    return BuildOutcome.Failed(BuildFailureKind.InputRejected, "'builtin:fetchurl' must be a fixed-output or impure derivation");
                }

                if (!derivation.Environment.TryGetValue("url", out var url))
                {
                    return BuildOutcome.Failed(BuildFailureKind.TransientFailure, "attribute 'url' missing");
                }

                var output = Path.Combine(storeDir, derivation.Outputs["out"].StorePath!.Value.BaseName);
                try
                {
                    log.Line($"downloading '{url}'...");
                    using var response = await Http.GetAsync(new Uri(url), HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
                    if (!response.IsSuccessStatusCode)
                    {
                        return BuildOutcome.Failed(BuildFailureKind.TransientFailure, $"unable to download '{url}': HTTP error {(int)response.StatusCode}");
                    }

                    await using var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
                    if (derivation.Environment.GetValueOrDefault("unpack") == "1")
                    {
                        NarExtractor.Restore(body, output);
                    }
                    else
                    {
                        await using (var file = File.Create(output))
                        {
                            await body.CopyToAsync(file, cancellationToken).ConfigureAwait(false);
                        }

                        if (derivation.Environment.GetValueOrDefault("executable") == "1")
                        {
                            File.SetUnixFileMode(output, (UnixFileMode)Convert.ToInt32("755", 8));
                        }
                    }
                }
                catch (Exception e) when (e is HttpRequestException or IOException or UriFormatException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
                {
                    return BuildOutcome.Failed(BuildFailureKind.TransientFailure, $"unable to download '{url}': {e.Message}");
                }

                return new BuildOutcome();
            default:
                return BuildOutcome.Failed(BuildFailureKind.InputRejected, $"unsupported builtin builder '{derivation.Builder}'");
        }
    }
}
