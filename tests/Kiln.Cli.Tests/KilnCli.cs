using Kiln.Nix.Tests.Support;

namespace Kiln.Cli.Tests;

/// <summary>
/// Runs the kiln executable that was built next to the tests; or, with <c>KILN_TEST_KILN</c> set, that program (test.sh
/// runs the account, key and token tests again through the published native kiln, which hands the rest to the managed
/// one).
/// </summary>
public static class KilnCli
{
    private static readonly string Dll = Path.Combine(AppContext.BaseDirectory, "kiln.dll");

    /// <summary>The native kiln of a publish (test.sh sets <c>KILN_NATIVE_KILN</c>), or null.</summary>
    public static string? Native => Environment.GetEnvironmentVariable("KILN_NATIVE_KILN") is { Length: > 0 } native ? native : null;

    public static ProcessResult Run(byte[]? stdin, params string[] args) =>
        Environment.GetEnvironmentVariable("KILN_TEST_KILN") is { Length: > 0 } program
            ? Processes.Run(program, args, stdin)
            : Processes.Run("dotnet", [Dll, .. args], stdin);

    /// <summary>Runs the managed kiln built next to the tests, whatever <c>KILN_TEST_KILN</c> says.</summary>
    public static ProcessResult RunManaged(params string[] args) => Processes.Run("dotnet", [Dll, .. args]);

    public static ProcessResult Run(params string[] args) => Run(null, args);

    /// <summary>Runs kiln and fails the test unless it exits 0.</summary>
    public static ProcessResult Ok(byte[]? stdin, params string[] args)
    {
        var result = Run(stdin, args);
        Assert.True(result.ExitCode == 0, $"kiln {string.Join(' ', args)} failed ({result.ExitCode}): {result.Stderr}");
        return result;
    }

    public static ProcessResult Ok(params string[] args) => Ok(null, args);

    /// <summary>Asserts that a failure was reported as one line on stderr, exit code 1, and no stack trace.</summary>
    public static void AssertOneLineError(ProcessResult result, string? contains = null)
    {
        Assert.Equal(1, result.ExitCode);
        var lines = result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line on stderr, got: {result.Stderr}");
        Assert.StartsWith("kiln: error: ", lines[0], StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", result.Stderr, StringComparison.Ordinal);
        if (contains is not null)
        {
            Assert.Contains(contains, lines[0], StringComparison.Ordinal);
        }
    }
}
