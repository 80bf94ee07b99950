using Kiln.Nix.Tests.Support;

namespace Kiln.Cli.Tests;

/// <summary>kiln serve refuses a malformed limit with one clear line, before it starts anything.</summary>
public class ServeOptionTests
{
    [Theory]
    [InlineData("12XB", "is not a size")]
    [InlineData("-5", "is not a size")]
    [InlineData("150%", "1% to 100%")]
    [InlineData("99999999999T", "is too large")]
    public void A_build_memory_that_is_not_a_size_is_refused(string value, string message)
    {
        using var temp = new TempDir();
        KilnCli.AssertOneLineError(KilnCli.Run("serve", "--data", temp["data"], "--ssh-listen", "none", "--http-listen", "none", "--build-memory", value), message);
        Assert.False(File.Exists(Path.Combine(temp["data"], "daemon.sock")));
    }
}
