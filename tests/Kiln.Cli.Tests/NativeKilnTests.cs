using System.Diagnostics;
using System.Text;
using Kiln.Nix.Tests.Support;

namespace Kiln.Cli.Tests;

/// <summary>
/// The kiln a publish lays out (what ./kiln runs): a NativeAOT program running kiln key …, kiln token … and kiln
/// account create | list | set itself, and handing every other command to the managed kiln beside it (kiln-managed)
/// in the same process. test.sh publishes it and names it in KILN_NATIVE_KILN; without one these tests skip
/// (KILN_REQUIRE_NATIVE=1 makes that a failure). test.sh also runs the account and cache command tests again through
/// it (KILN_TEST_KILN).
/// </summary>
public class NativeKilnTests
{
    internal static string Native()
    {
        if (KilnCli.Native is { } native)
        {
            return native;
        }

        Assert.False(Environment.GetEnvironmentVariable("KILN_REQUIRE_NATIVE") == "1", "KILN_REQUIRE_NATIVE=1, but KILN_NATIVE_KILN names no native kiln");
        Assert.Skip("no published native kiln (test.sh publishes one and names it in KILN_NATIVE_KILN)");
        return null!;
    }

    internal static ProcessResult Managed(params string[] args) => KilnCli.RunManaged(args);

    private static ProcessResult NativeRun(params string[] args) => Processes.Run(Native(), args);

    internal static void AssertSame(params string[] args)
    {
        var (native, managed) = (NativeRun(args), Managed(args));
        var command = string.Join(' ', args);
        Assert.True(managed.ExitCode == native.ExitCode, $"kiln {command}: exit {native.ExitCode} natively, {managed.ExitCode} managed ({native.Stderr})");
        Assert.True(managed.StdoutText == native.StdoutText, $"kiln {command}: native stdout\n{native.StdoutText}\nmanaged stdout\n{managed.StdoutText}");
        Assert.True(managed.Stderr == native.Stderr, $"kiln {command}: native stderr\n{native.Stderr}\nmanaged stderr\n{managed.Stderr}");
    }

    /// <summary>
    /// A copy of the published native kiln in a directory of its own, with the SQLite library it loads and no
    /// kiln-managed: whatever it does there, it did itself. Returns its path.
    /// </summary>
    internal static string Alone(TempDir temp)
    {
        var published = Native();
        var alone = temp["alone"];
        Directory.CreateDirectory(alone);
        var native = Path.Combine(alone, "kiln");
        File.Copy(published, native);
        File.Copy(Path.Combine(Path.GetDirectoryName(published)!, "libe_sqlite3.so"), Path.Combine(alone, "libe_sqlite3.so"));
        return native;
    }

    [Fact]
    public void The_published_kiln_is_a_native_program_and_the_managed_kiln_is_beside_it()
    {
        var native = File.ReadAllBytes(Native());
        var managed = File.ReadAllBytes(Path.Combine(Path.GetDirectoryName(Native())!, "kiln-managed"));
        Assert.True(native.AsSpan().StartsWith((byte[])[0x7f, (byte)'E', (byte)'L', (byte)'F']), "kiln is not an ELF program");

        // A .NET apphost starts the runtime through hostfxr; a NativeAOT program carries its runtime and never does.
        Assert.True(managed.AsSpan().IndexOf("libhostfxr.so"u8) >= 0, "kiln-managed is not the .NET apphost");
        Assert.True(native.AsSpan().IndexOf("libhostfxr.so"u8) < 0, "kiln is the .NET apphost, not the native kiln");
    }

    [Fact]
    public void Keys_and_tokens_read_the_same_natively_as_through_the_managed_kiln()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        Assert.Equal(0, NativeRun("account", "create", "alice", "--data", data).ExitCode);
        var key = AccountCommandTests.NewKey(temp, "laptop").PublicKey;
        var added = NativeRun("key", "add", "alice", key, "--permissions", "store:read,build:write", "--data", data, "--json");
        Assert.True(added.ExitCode == 0, added.Stderr);
        Assert.Contains("\"permissions\":[\"store:read\",\"build:write\"]", added.StdoutText, StringComparison.Ordinal);
        Assert.Equal(0, Managed("key", "add", "alice", AccountCommandTests.NewKey(temp, "ci", "rsa").PublicKey, "--data", data).ExitCode);
        var token = NativeRun("token", "create", "alice", "--permissions", "store:read", "--expires", "30d", "--description", "ci runners", "--data", data, "--json");
        Assert.True(token.ExitCode == 0, token.Stderr);
        Assert.Contains("\"description\":\"ci runners\"", token.StdoutText, StringComparison.Ordinal);
        Assert.Equal(0, Managed("token", "create", "alice", "--data", data).ExitCode);
        Assert.Equal(0, NativeRun("token", "revoke", "alice", "2", "--data", data).ExitCode);

        foreach (var json in new[] { "--json", "" })
        {
            AssertSame([.. new[] { "key", "list", "alice", "--data", data, json }.Where(a => a.Length > 0)]);
            AssertSame([.. new[] { "token", "list", "alice", "--data", data, json }.Where(a => a.Length > 0)]);
        }

        // Failures: the same line and exit code.
        AssertSame("key", "list", "nobody", "--data", data);
        AssertSame("key", "add", "alice", "not a key", "--data", data);
        AssertSame("key", "remove", "alice", "SHA256:nothere", "--data", data);
        AssertSame("token", "create", "alice", "--expires", "yesterday", "--data", data);
        AssertSame("token", "create", "alice", "--permissions", "build:sudo", "--data", data);
        AssertSame("token", "revoke", "alice", "99", "--data", data);
        AssertSame("key", "list");
        AssertSame("key", "list", "alice", "--data", "/dev/null"); // the runtime's own message, not a resource key
        AssertSame("key", "--help");
        AssertSame("token", "create", "--help");

        Assert.Equal(0, NativeRun("key", "remove", "alice", key, "--data", data).ExitCode);
        AssertSame("key", "list", "alice", "--data", data);
    }

    [Fact]
    public void Accounts_are_created_listed_and_set_natively_as_through_the_managed_kiln()
    {
        using var temp = new TempDir();
        var (data, other) = (temp["data"], temp["other"]);

        // The same command on two fresh data directories, once by each kiln: the same answer.
        foreach (var json in new[] { "--json", "" })
        {
            var (native, managed) = (NativeRun([.. new[] { "account", "create", "alice" + json.Length, "--data", data, json }.Where(a => a.Length > 0)]),
                Managed([.. new[] { "account", "create", "alice" + json.Length, "--data", other, json }.Where(a => a.Length > 0)]));
            Assert.True(native.ExitCode == 0, native.Stderr);
            Assert.StartsWith(json.Length > 0 ? "{\"name\":\"alice6\",\"id\":" : "created account alice0", native.StdoutText, StringComparison.Ordinal);
            Assert.Equal(managed.StdoutText, native.StdoutText);
            Assert.Equal(managed.Stderr, native.Stderr);
        }

        var netrc = temp["netrc"];
        File.WriteAllText(netrc, "machine cache.example.org login ci password s3cret\n");
        foreach (var json in new[] { "--json", "" })
        {
            AssertSame([.. new[] { "account", "list", "--data", data, json }.Where(a => a.Length > 0)]);
            // Setting twice gives the second the same state to report: each kiln sets it once.
            AssertSame([.. new[] { "account", "set", "alice0", "--public-cache", "--data", data, json }.Where(a => a.Length > 0)]);
            AssertSame([.. new[] { "account", "set", "alice6", "--substituters", "https://cache.example.org", "--trusted-public-keys",
                "cache.example.org-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "--netrc-file", netrc, "--data", data, json }.Where(a => a.Length > 0)]);
        }

        Assert.Contains("with credentials", NativeRun("account", "set", "alice6", "--private-cache", "--data", data).StdoutText, StringComparison.Ordinal);

        // Failures: the same line and exit code.
        AssertSame("account", "create", "alice0", "--data", data);
        AssertSame("account", "create", "Not A Name", "--data", data);
        AssertSame("account", "set", "nobody", "--public-cache", "--data", data);
        AssertSame("account", "set", "alice0", "--data", data);
        AssertSame("account", "set", "alice0", "--public-cache", "--private-cache", "--data", data);
        AssertSame("account", "list");

        // What the native kiln lacks of the group, and the group's help, the managed kiln answers.
        AssertSame("account");
        AssertSame("account", "--help");
        AssertSame("account", "-h");
        AssertSame("account", "/?");
        AssertSame("account", "no-such-subcommand");
        AssertSame("account", "create", "--help");
        AssertSame("account", "delete", "--help");
        AssertSame("account", "push-key", "--help");

        // Through a link of another name, both kilns' help still says kiln: one the native kiln prints, one it hands on.
        var link = temp["k"];
        File.CreateSymbolicLink(link, Native());
        foreach (var help in new[] { new[] { "account", "list", "--help" }, ["account", "--help"] })
        {
            var text = Processes.Run(link, help).StdoutText;
            Assert.Contains($"kiln {string.Join(' ', help[..^1])}", text, StringComparison.Ordinal);
            Assert.DoesNotContain("k account", text, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Alone_the_native_kiln_runs_its_own_commands_and_says_what_is_missing_for_the_rest()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        Assert.Equal(0, Managed("account", "create", "alice", "--data", data).ExitCode);
        var native = Alone(temp);
        var alone = Path.GetDirectoryName(native)!;

        // kiln key …, kiln token … and kiln account create | list | set run here, with no managed kiln to hand them
        // to; so does kiln nix dump-path FILE.
        var listed = Processes.Run(native, ["key", "list", "alice", "--data", data]);
        Assert.True(listed.ExitCode == 0, listed.Stderr);
        foreach (var account in new[] { new[] { "create", "bob" }, ["set", "bob", "--public-cache"], ["list"] })
        {
            var run = Processes.Run(native, ["account", .. account, "--data", data]);
            Assert.True(run.ExitCode == 0, $"kiln account {string.Join(' ', account)}: {run.Stderr}");
        }

        Assert.Equal("alice\nbob\n", Processes.Run(native, ["account", "list", "--data", data]).StdoutText);
        var token = Processes.Run(native, ["token", "create", "alice", "--data", data]);
        Assert.True(token.ExitCode == 0, token.Stderr);
        File.WriteAllText(temp["small"], "hello\n");
        var dumped = Processes.Run(native, ["nix", "dump-path", temp["small"]]);
        Assert.True(dumped.ExitCode == 0, dumped.Stderr);
        Assert.Equal(Managed("nix", "dump-path", temp["small"]).Stdout, dumped.Stdout);

        // Anything else needs the managed kiln: one line saying which file is missing.
        var other = Processes.Run(native, ["account", "delete", "bob", "--yes", "--data", data]);
        KilnCli.AssertOneLineError(other, $"cannot run {Path.Combine(alone, "kiln-managed")}: No such file or directory");

        // A native kiln in kiln-managed's place would exec itself for ever: it stops at once.
        File.Copy(native, Path.Combine(alone, "kiln-managed"));
        var looped = Processes.Run("timeout", ["60", native, "--version"]);
        KilnCli.AssertOneLineError(looped, "is not the managed kiln");
    }

    [Fact]
    public void Every_other_command_is_the_managed_kilns_run_in_the_same_process()
    {
        using var temp = new TempDir();
        var data = temp["data"];
        AssertSame("--version");
        AssertSame("--help");
        AssertSame();
        AssertSame("no-such-command");
        AssertSame("account", "push-key", "nobody", "--data", data);
        AssertSame("nix", "hash-path", "--help");

        // kiln serve through the native kiln: the process its starter holds becomes the managed kiln (execv), so a
        // signal to that pid stops the server.
        var start = new ProcessStartInfo(Native()) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in new[] { "serve", "--data", data, "--ssh-listen", "none", "--http-listen", "none" })
        {
            start.ArgumentList.Add(argument);
        }

        using var server = Process.Start(start)!;
        var log = new StringBuilder();
        server.ErrorDataReceived += (_, e) => { lock (log) { log.AppendLine(e.Data); } };
        server.OutputDataReceived += (_, e) => { lock (log) { log.AppendLine(e.Data); } };
        server.BeginErrorReadLine();
        server.BeginOutputReadLine();
        try
        {
            var socket = Path.Combine(data, "daemon.sock");
            for (var waited = 0; !File.Exists(socket) && !server.HasExited && waited < 600; waited++)
            {
                Thread.Sleep(100);
            }

            Assert.True(File.Exists(socket), $"kiln serve did not start: {log}");
            Assert.Equal(Path.Combine(Path.GetDirectoryName(Native())!, "kiln-managed"), new FileInfo($"/proc/{server.Id}/exe").LinkTarget);
            Processes.Run("kill", ["-TERM", server.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
            Assert.True(server.WaitForExit(60_000), "kiln serve did not stop on SIGTERM");
            Assert.True(server.ExitCode == 0, $"kiln serve exited {server.ExitCode}: {log}");
        }
        finally
        {
            if (!server.HasExited)
            {
                server.Kill(entireProcessTree: true);
                server.WaitForExit();
            }
        }
    }
}
