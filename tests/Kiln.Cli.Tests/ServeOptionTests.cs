using Kiln.Nix.Tests.Support;

namespace Kiln.Cli.Tests;

/// <summary>kiln serve refuses a malformed limit with one clear line, before it starts anything.</summary>
public class ServeOptionTests
{
    [Theory]
    [InlineData("--build-memory", "12XB", "is not a size")]
    [InlineData("--build-memory", "-5", "is not a size")]
    [InlineData("--build-memory", "150%", "a share of this machine's memory is 1% to 100%")]
    [InlineData("--build-memory", "99999999999T", "is too large")]
    [InlineData("--build-disk", "150%", "a share of the data directory's file system is 1% to 100%")]
    [InlineData("--build-disk", "ten", "is not a size")]
    [InlineData("--min-free-disk", "0.5GiB", "is not a size")]
    [InlineData("--min-free-disk", "100%", "would stop every build that writes")]
    [InlineData("--http-staging-size", "10%", "is not a size")]
    public void A_size_that_is_not_one_is_refused(string option, string value, string message)
    {
        using var temp = new TempDir();
        KilnCli.AssertOneLineError(KilnCli.Run("serve", "--data", temp["data"], "--ssh-listen", "none", "--http-listen", "none", option, value), message);
        Assert.False(File.Exists(Path.Combine(temp["data"], "daemon.sock")));
    }

    [Theory]
    [InlineData("aes128-gcm@openssh.com chacha20-poly1305@openssh.com")] // a second word would be another of sshd's lines' words
    [InlineData("aes128-gcm@openssh.com\nPermitRootLogin yes")] // or a line of its own
    [InlineData("aes128-gcm@openssh.com#")]
    [InlineData("aes128-gcm")] // not a name OpenSSH knows: sshd would not start, and Kiln would run without SSH
    [InlineData("+chacha20-poly1305@openssh.com,aes512-gcm@openssh.com")]
    [InlineData("")]
    public void A_cipher_list_sshd_config_could_not_carry_as_one_list_is_refused(string value)
    {
        using var temp = new TempDir();
        KilnCli.AssertOneLineError(KilnCli.Run("serve", "--data", temp["data"], "--ssh-listen", "none", "--http-listen", "none", "--ssh-ciphers", value),
            "is not a list of the OpenSSH cipher names");
        Assert.False(File.Exists(Path.Combine(temp["data"], "daemon.sock")));
    }

    [Theory]
    [InlineData(null, "cannot read")]
    [InlineData("short", "must hold one token of at least 16 characters")]
    [InlineData("two tokens-of-a-good-length", "must hold one token of at least 16 characters")]
    [InlineData("", "must hold one token of at least 16 characters")]
    public void A_metrics_token_file_without_one_good_token_is_refused(string? content, string message)
    {
        using var temp = new TempDir();
        var file = temp["metrics-token"];
        if (content is not null)
        {
            File.WriteAllText(file, content + "\n");
        }

        KilnCli.AssertOneLineError(KilnCli.Run("serve", "--data", temp["data"], "--ssh-listen", "none", "--http-listen", "none", "--metrics-token", file), message);
        Assert.False(File.Exists(Path.Combine(temp["data"], "daemon.sock")));
    }

    [Theory]
    [InlineData("min-free-disk = 100%", new string[0], "would stop every build that writes")] // the file's value is read
    [InlineData("min-free-disk = 100%  # a comment\n\n# another", new[] { "--min-free-disk", "0.5GiB" }, "is not a size")] // the command line wins
    [InlineData("build-memory=12XB", new string[0], "is not a size")]
    [InlineData("max-fun = 3", new string[0], "line 1: kiln serve has no setting 'max-fun'")]
    [InlineData("# settings\ntimeout", new string[0], "line 2: 'timeout' needs '= value'")]
    [InlineData("nar-redirect = maybe", new string[0], "nar-redirect is true or false")]
    [InlineData("config = /etc/other", new string[0], "no setting 'config'")]
    public void A_config_file_gives_settings_the_command_line_does_not_and_its_mistakes_are_refused_by_line(string content, string[] arguments, string message)
    {
        using var temp = new TempDir();
        var file = temp["kiln.conf"];
        File.WriteAllText(file, content + "\n");
        KilnCli.AssertOneLineError(KilnCli.Run(["serve", "--config", file, "--data", temp["data"], "--ssh-listen", "none", "--http-listen", "none", .. arguments]), message);
        Assert.False(File.Exists(Path.Combine(temp["data"], "daemon.sock")));
    }

    [Fact]
    public void A_config_file_is_read_when_named_with_an_equals_sign_too()
    {
        using var temp = new TempDir();
        File.WriteAllText(temp["kiln.conf"], "min-free-disk = 100%\n");
        KilnCli.AssertOneLineError(KilnCli.Run("serve", $"--config={temp["kiln.conf"]}", "--data", temp["data"], "--ssh-listen", "none", "--http-listen", "none"),
            "would stop every build that writes");
    }

    [Fact]
    public void A_config_file_that_cannot_be_read_is_refused()
    {
        using var temp = new TempDir();
        KilnCli.AssertOneLineError(KilnCli.Run("serve", "--config", temp["missing.conf"], "--data", temp["data"]), "cannot read the config file");
    }
}
