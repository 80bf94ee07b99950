using System.Globalization;
using System.Text.Json;
using Kiln.EndToEnd.Tests.Support;
using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The SSH shell's rows of the tenant-isolation table (19): every shell command, run through the real sshd by Alice and
/// by Bob, against their own build or key and the other's. Another account's build or key answers exactly as one that
/// does not exist (the error text is compared with a made-up id's or fingerprint's), lists and usage hold the caller's
/// own only, and registering the other's public key asks for proof instead of saying it exists.
/// </summary>
public sealed class ShellIsolationTests(ShellIsolationTests.World world) : IClassFixture<ShellIsolationTests.World>
{
    public enum Target
    {
        Own,
        Other,
    }

    public static TheoryData<string, string, Target> Table()
    {
        var rows = new TheoryData<string, string, Target>();
        foreach (var who in new[] { "alice", "bob" })
        {
            foreach (var command in new[] { "builds show", "builds log", "builds list", "usage", "keys list", "keys remove", "keys add" })
            {
                foreach (var target in Enum.GetValues<Target>())
                {
                    // keys remove of one's own (last) key and keys add of one's own key are not isolation questions.
                    if (command is "keys remove" or "keys add" && target == Target.Own)
                    {
                        continue;
                    }

                    rows.Add(who, command, target);
                }
            }
        }

        return rows;
    }

    [Theory]
    [MemberData(nameof(Table))]
    public void A_shell_command_sees_the_callers_account_only(string who, string command, Target target)
    {
        var self = world.Accounts[who];
        var other = world.Accounts[who == "alice" ? "bob" : "alice"];
        var subject = target == Target.Own ? self : other;
        string[] Words(string argument) => ["kiln", .. command.Split(' '), argument];
        var result = command switch
        {
            "builds show" or "builds log" => world.Shell(self, Words(subject.BuildId)),
            "keys remove" => world.Shell(self, Words(subject.Fingerprint)),
            "keys add" => world.Shell(self, Words($"'{subject.PublicKey}'")),
            _ => world.Shell(self, ["kiln", .. command.Split(' '), "--json"]),
        };
        var output = result.StdoutText + result.Stderr;

        switch (command)
        {
            case "builds show" or "builds log" when target == Target.Own:
                Assert.True(result.ExitCode == 0, output);
                Assert.Contains(command == "builds log" ? $"hello from the builder of {self.Name}" : $"-{self.Name}-talker.drv", result.StdoutText, StringComparison.Ordinal);
                break;
            case "builds show" or "builds log" or "keys remove":
                // Exactly the answer for something that does not exist.
                var madeUp = command == "keys remove" ? "SHA256:" + new string('A', 43) : "987654321";
                var nothing = world.Shell(self, Words(madeUp));
                Assert.Equal(1, result.ExitCode);
                Assert.Equal(nothing.Stderr.Replace(madeUp, "X", StringComparison.Ordinal),
                    result.Stderr.Replace(command == "keys remove" ? subject.Fingerprint : subject.BuildId, "X", StringComparison.Ordinal));
                Assert.DoesNotContain(other.Name, output, StringComparison.Ordinal);
                break;
            case "keys add":
                Assert.Equal(1, result.ExitCode);
                Assert.Contains("prove that you hold this key first", result.Stderr, StringComparison.Ordinal);
                Assert.DoesNotContain("already", output, StringComparison.Ordinal);
                break;
            case "builds list":
                Assert.True(result.ExitCode == 0, output);
                using (var builds = JsonDocument.Parse(result.StdoutText))
                {
                    var ids = builds.RootElement.EnumerateArray().Select(b => b.GetProperty("id").GetInt64().ToString(CultureInfo.InvariantCulture)).ToList();
                    Assert.Equal(target == Target.Own, ids.Contains(subject.BuildId));
                }

                break;
            case "usage":
                Assert.True(result.ExitCode == 0, output);
                using (var usage = JsonDocument.Parse(result.StdoutText))
                {
                    // Each started one build; the JSON is the API's document.
                    Assert.Equal(1, usage.RootElement.GetProperty("periods").EnumerateArray().Sum(p => p.GetProperty("builds").GetInt32()));
                }

                break;
            case "keys list":
                Assert.True(result.ExitCode == 0, output);
                Assert.Equal(target == Target.Own, result.StdoutText.Contains(subject.Fingerprint, StringComparison.Ordinal));
                break;
        }

        Assert.DoesNotContain(target == Target.Other ? $"-{other.Name}-talker" : "\u0000", output, StringComparison.Ordinal);
    }

    internal sealed record Account(string Name, SshTests.Login Login, string BuildId, string Fingerprint, string PublicKey);

    /// <summary>One Kiln with its sshd; Alice and Bob, each with one key and one build of their own.</summary>
    public sealed class World : IDisposable
    {
        private readonly KilnProcess _kiln;

        public World()
        {
            var client = NixClient.For("2.8.0");
            _kiln = new KilnProcess(ssh: true);
            using var workspace = client.NewWorkspace();
            var accounts = new Dictionary<string, Account>();
            foreach (var name in new[] { "alice", "bob" })
            {
                var login = SshTests.NewLogin(client, _kiln, name, permissions: "store:read,store:write,build:read,build:write,account:write");
                var talker = Dag.WriteSingle(client, workspace, $"{name}-talker", $"echo hello from the builder of {name}; mkdir $out");
                client.Ok(_kiln, [.. login.Environment, "nix-build", "--store", "ssh-ng://kiln@127.0.0.1", talker, "--no-out-link"]);
                using var builds = JsonDocument.Parse(SshTests.Shell(_kiln, login, null, "kiln", "builds", "list", "--json").StdoutText);
                var id = builds.RootElement[0].GetProperty("id").GetInt64().ToString(CultureInfo.InvariantCulture);
                var publicKey = File.ReadAllText(login.KeyFile + ".pub").Trim();
                var fingerprint = Processes.Run("ssh-keygen", ["-l", "-f", login.KeyFile + ".pub"]).StdoutText.Split(' ')[1];
                accounts[name] = new Account(name, login, id, fingerprint, publicKey);
            }

            Accounts = accounts;
        }

        internal IReadOnlyDictionary<string, Account> Accounts { get; }

        internal ProcessResult Shell(Account account, string[] command) => SshTests.Shell(_kiln, account.Login, null, command);

        public void Dispose() => _kiln.Dispose();
    }
}
