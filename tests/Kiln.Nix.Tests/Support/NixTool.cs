namespace Kiln.Nix.Tests.Support;

/// <summary>
/// The real Nix, for live comparisons. Tests that need it call <see cref="Require"/>: without Nix they are skipped,
/// unless KILN_REQUIRE_NIX=1 (as in CI), where a missing Nix is a failure.
/// </summary>
public static class NixTool
{
    private static readonly Lazy<bool> IsAvailable = new(() =>
    {
        try
        {
            return Processes.Run("nix-store", ["--version"]).ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    });

    public static void Require()
    {
        if (IsAvailable.Value)
        {
            return;
        }

        if (Environment.GetEnvironmentVariable("KILN_REQUIRE_NIX") == "1")
        {
            Assert.Fail("nix is not installed but KILN_REQUIRE_NIX=1");
        }

        Assert.Skip("nix is not installed");
    }

    private static readonly Dictionary<string, string> Env = new()
    {
        ["NIX_CONFIG"] = "experimental-features = nix-command\nbuild-users-group = \nsandbox = false",
    };

    /// <summary>Runs a Nix command; fails the test if it fails.</summary>
    public static ProcessResult Run(string program, params string[] args) => RunWithInput(program, null, args);

    public static ProcessResult RunWithInput(string program, byte[]? stdin, params string[] args)
    {
        var result = Processes.Run(program, args, stdin, Env);
        Assert.True(result.ExitCode == 0, $"{program} {string.Join(' ', args)} failed ({result.ExitCode}): {result.Stderr}");
        return result;
    }

    /// <summary>Runs a Nix command and returns its result whatever the exit code.</summary>
    public static ProcessResult Try(string program, byte[]? stdin, params string[] args) =>
        Processes.Run(program, args, stdin, Env);
}
