using Kiln.EndToEnd.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The settings hierarchy against stock Nix over SSH: a host alias with <c>SetEnv KILN_TIMEOUT=2</c> makes a sleeping
/// build fail with Nix's timeout message while a plain one builds it; an account's setting holds for its sessions, and
/// a key (or a session) cannot loosen it.
/// </summary>
public sealed class SettingsTests
{
    private const string Store = "ssh-ng://kiln@127.0.0.1";

    [Theory]
    [InlineData("2.3.7")]
    [InlineData("2.34.8")]
    public void A_sessions_environment_and_the_accounts_settings_limit_its_builds_and_a_key_cannot_loosen_them(string version)
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For(version);
        using var kiln = new KilnProcess(ssh: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice", "store:read,store:write,build:read,build:write,account:write");
        var salt = Guid.NewGuid().ToString("N");
        string[] With(string variable) => [.. alice.Environment[..^1], alice.Environment[^1] + $" -o SetEnv={variable}"];
        string Sleeper(string name) => Dag.WriteSingle(client, workspace, name, $"echo {salt}; sleep 5; mkdir $out");
        string[] Build(string drv) => ["nix-build", "--store", Store, drv, "--no-out-link"];

        // The session's own limit: Nix's message, from Kiln.
        var limited = client.Run(kiln, [.. With("KILN_TIMEOUT=2"), .. Build(Sleeper("limited"))]);
        Assert.NotEqual(0, limited.ExitCode);
        Assert.Contains("timed out after 2 seconds", limited.Stderr, StringComparison.Ordinal);
        client.Ok(kiln, [.. alice.Environment, .. Build(Sleeper("plain"))]);

        // The account's limit holds for every session; a session asking for more gets the account's.
        Assert.Contains("timeout = 2", kiln.Cli("settings", "set", "alice", "timeout", "2"), StringComparison.Ordinal);
        var account = client.Run(kiln, [.. With("KILN_TIMEOUT=1h"), .. Build(Sleeper("account"))]);
        Assert.Contains("timed out after 2 seconds", account.Stderr, StringComparison.Ordinal);

        // A key (through its own shell, with account:write) cannot loosen it either; shown with where it comes from.
        Assert.Contains("timeout = 3600", SshTests.Shell(kiln, alice, null, "kiln", "settings", "set", "timeout", "1h", "--this-key").StdoutText, StringComparison.Ordinal);
        Assert.Matches(@"timeout\s+2 s\s+account", SshTests.Shell(kiln, alice, null, "kiln", "settings").StdoutText);
        Assert.Contains("timed out after 2 seconds", client.Run(kiln, [.. alice.Environment, .. Build(Sleeper("key"))]).Stderr, StringComparison.Ordinal);

        // Unset at the account: the key's hour is the tightest left, and the build runs.
        kiln.Cli("settings", "unset", "alice", "timeout");
        Assert.Matches(@"timeout\s+3600 s\s+key", SshTests.Shell(kiln, alice, null, "kiln", "settings").StdoutText);
        client.Ok(kiln, [.. alice.Environment, .. Build(Sleeper("unset"))]);

        // The shell's --final, wherever it stands, makes the account's value final.
        Assert.Contains("(final)", SshTests.Shell(kiln, alice, null, "kiln", "settings", "set", "--final", "max-silent-time", "1h").StdoutText, StringComparison.Ordinal);
        Assert.Matches(@"max-silent-time\s+3600 s\s+account, final", SshTests.Shell(kiln, alice, null, "kiln", "settings").StdoutText);
    }
}
