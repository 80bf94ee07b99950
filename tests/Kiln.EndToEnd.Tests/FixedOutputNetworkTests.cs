using System.Security.Cryptography;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// 19.6: a fixed-output build has a network, as in Nix, but on a shared host it must not reach Kiln's own ports on
/// loopback, the host's private networks or a cloud's link-local metadata service — only the internet and what the
/// operator allowed. Every target is a real listener the host reaches, and the same builds run on a Kiln started
/// with <c>--fod-network host</c> (stock Nix's behaviour) reach them all, so the test fails without the isolation.
/// </summary>
public class FixedOutputNetworkTests
{
    private const string Store = NixClient.SocketUri;

    [Fact]
    public void A_fixed_output_build_reaches_what_the_operator_allowed_and_never_Kiln_loopback_private_or_link_local_addresses()
    {
        var client = NixClient.For("2.8.0");
        using var served = new TempDir();
        var (flat, recursive) = Greeting(served.Path);
        var allowed = HttpServer.Start(served.Path, TestAddresses.Allowed);
        var forbidden = new[]
        {
            $"http://{TestAddresses.Private}:{HttpServer.Start(served.Path, TestAddresses.Private)}/greeting.txt",
            $"http://{TestAddresses.LinkLocal}:{HttpServer.Start(served.Path, TestAddresses.LinkLocal)}/greeting.txt",
        };

        var isolated = Attempt(client, ["--fod-allow-network", $"{TestAddresses.Allowed}/32"], allowed, forbidden, recursive, flat);
        Assert.True(isolated.Shell.ExitCode == 0, isolated.Shell.Stderr);
        foreach (var target in isolated.Targets)
        {
            Assert.Contains($"refused {target}", isolated.Shell.Stderr, StringComparison.Ordinal);
        }

        Assert.True(isolated.Fetchurl.ExitCode != 0, isolated.Fetchurl.Stderr);
        Assert.Contains("unable to download", isolated.Fetchurl.Stderr, StringComparison.Ordinal);

        // builtin:fetchurl is Kiln's program: a derivation's variables that would run code in it are not given to it
        // (before, a startup hook naming a missing assembly stopped it, so one naming the tenant's would have run).
        Assert.True(isolated.Hooked.ExitCode == 0, isolated.Hooked.Stderr);

        // The control: with the host's network, as stock Nix gives it, the same builds reach every target (but the
        // address slirp4netns would map to the host's loopback, which only exists in the isolated network).
        var host = Attempt(client, ["--fod-network", "host"], allowed, forbidden, recursive, flat);
        Assert.True(host.Shell.ExitCode != 0, host.Shell.Stderr);
        foreach (var target in host.Targets.Where(t => !t.Contains("//10.0.2.2:", StringComparison.Ordinal)))
        {
            Assert.Contains($"reached {target}", host.Shell.Stderr, StringComparison.Ordinal);
        }

        Assert.True(host.Fetchurl.ExitCode == 0, host.Fetchurl.Stderr);
    }

    [Fact]
    public void A_builtin_download_larger_than_the_operators_cap_is_refused()
    {
        // 20.1: builtin:fetchurl's size is capped (--fetch-max-size, 4 GiB by default); here 10 bytes against 18.
        var client = NixClient.For("2.8.0");
        using var served = new TempDir();
        var (flat, _) = Greeting(served.Path);
        var port = HttpServer.Start(served.Path, TestAddresses.Allowed);
        using var workspace = client.NewWorkspace();
        File.WriteAllText(client.HostPath($"{workspace}/capped.nix"), Fetchurl("greeting.txt", $"http://{TestAddresses.Allowed}:{port}/greeting.txt", flat));
        string[] allow = ["--fod-allow-network", $"{TestAddresses.Allowed}/32"];
        using (var capped = new KilnProcess(arguments: [.. allow, "--fetch-max-size", "10"]))
        {
            var refused = client.Run(capped, "nix-build", "--store", Store, $"{workspace}/capped.nix", "--no-out-link");
            Assert.NotEqual(0, refused.ExitCode);
            Assert.Contains("more than this Kiln allows (10", refused.Stderr, StringComparison.Ordinal);
        }

        using var kiln = new KilnProcess(arguments: allow);
        Assert.Equal(0, client.Run(kiln, "nix-build", "--store", Store, $"{workspace}/capped.nix", "--no-out-link").ExitCode);
    }

    // Builds, on a fresh Kiln with the given options, a shell fixed-output derivation that tries every forbidden
    // target (failing if it reaches one) and then fetches its output from the allowed server, and a builtin:fetchurl
    // of Kiln's own /nix-cache-info on loopback.
    private static (ProcessResult Shell, ProcessResult Fetchurl, ProcessResult Hooked, string[] Targets) Attempt(NixClient client, string[] options, int allowedPort,
        string[] forbidden, string recursiveHash, string flatHash)
    {
        using var kiln = new KilnProcess(http: true, arguments: options);
        var cacheInfo = $"http://127.0.0.1:{kiln.HttpPort}/nix-cache-info";
        string[] targets = [cacheInfo, $"http://10.0.2.2:{kiln.HttpPort}/nix-cache-info", .. forbidden];
        using var http = new HttpClient();
        var cacheInfoHash = Convert.ToHexStringLower(SHA256.HashData(http.GetByteArrayAsync(new Uri(cacheInfo)).GetAwaiter().GetResult()));

        using var workspace = client.NewWorkspace();
        Dag.WriteBusybox(client, workspace);
        File.WriteAllText(client.HostPath($"{workspace}/fod-network.nix"), $$"""
            let bb = ./bb; in {
              shell = derivation {
                name = "fod-network";
                system = "x86_64-linux";
                builder = "${bb}/bin/sh";
                PATH = "${bb}/bin";
                args = [ "-c" ''
                  for u in {{string.Join(' ', targets)}}; do
                    if timeout 10 wget -q -O /dev/null "$u"; then echo "reached $u"; reached=1; else echo "refused $u"; fi
                  done
                  [ -z "$reached" ] || exit 1
                  mkdir $out; wget -q -O $out/greeting.txt http://{{TestAddresses.Allowed}}:{{allowedPort}}/greeting.txt
                '' ];
                outputHashMode = "recursive";
                outputHashAlgo = "sha256";
                outputHash = "{{recursiveHash}}";
              };
              fetchurl = {{Fetchurl("kiln-cache-info", cacheInfo, cacheInfoHash)}};
              hooked = {{Fetchurl("greeting.txt", $"http://{TestAddresses.Allowed}:{allowedPort}/greeting.txt", flatHash, """
                DOTNET_STARTUP_HOOKS = "/nix/store/00000000000000000000000000000000-hook/hook.dll";
                LD_PRELOAD = "/nix/store/00000000000000000000000000000000-hook/hook.so";
                """)}};
            }
            """);
        var shell = client.Run(kiln, "nix-build", "--store", Store, $"{workspace}/fod-network.nix", "-A", "shell", "--no-out-link");
        var fetchurl = client.Run(kiln, "nix-build", "--store", Store, $"{workspace}/fod-network.nix", "-A", "fetchurl", "--no-out-link");
        var hooked = client.Run(kiln, "nix-build", "--store", Store, $"{workspace}/fod-network.nix", "-A", "hooked", "--no-out-link");
        return (shell, fetchurl, hooked, targets);
    }

    // What the test servers serve (greeting.txt in DIR), and its flat and recursive SHA-256 as stock Nix computes them.
    private static (string Flat, string Recursive) Greeting(string directory)
    {
        File.WriteAllText(Path.Combine(directory, "greeting.txt"), "fetched over http\n");
        return (Processes.Run("nix-hash", ["--type", "sha256", "--flat", Path.Combine(directory, "greeting.txt")]).StdoutText.Trim(),
            Processes.Run("nix-hash", ["--type", "sha256", "--base32", directory]).StdoutText.Trim());
    }

    // A builtin:fetchurl derivation (with more attributes, if any) as a Nix expression.
    private static string Fetchurl(string name, string url, string flatHash, string more = "") => $$"""
        derivation {
          name = "{{name}}";
          system = "builtin";
          builder = "builtin:fetchurl";
          url = "{{url}}";
          {{more}}
          outputHashMode = "flat";
          outputHashAlgo = "sha256";
          outputHash = "{{flatHash}}";
        }
        """;
}
