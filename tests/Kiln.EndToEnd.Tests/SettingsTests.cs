using Kiln.EndToEnd.Tests.Support;
using Kiln.Store.Metadata;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.EndToEnd.Tests;

/// <summary>
/// The settings hierarchy against stock Nix over SSH: a host alias with <c>SetEnv KILN_TIMEOUT=2</c> makes a sleeping
/// build fail with Nix's timeout message while a plain one builds it; an account's setting holds for its sessions, and
/// a key (or a session) cannot loosen it. An account's max-jobs holds its builds in line (and says so in the client's
/// log), its max-cpu is the build's NIX_BUILD_CORES, and its quotas refuse a build or an upload cleanly.
/// </summary>
public sealed class SettingsTests
{
    private const string Store = "ssh-ng://kiln@127.0.0.1";

    [Fact]
    public void An_accounts_signing_key_and_netrc_come_on_standard_input_never_into_the_log_and_the_key_signs_its_builds()
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess(ssh: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice", "store:read,store:write,build:read,build:write,account:write");
        var secret = Kiln.Nix.Signing.SecretKey.Generate("alices-cache-1");
        var secretText = secret.ToString();

        // On the command line (which the server logs, and ps shows): refused, and not logged.
        var refused = SshTests.Shell(kiln, alice, null, "kiln", "settings", "set", "signing-key-for-builds", secretText);
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("standard input", refused.Stderr, StringComparison.Ordinal);

        // On standard input, as a file is piped: set, and echoed by its public half.
        var set = SshTests.Shell(kiln, alice, secretText + "\n", "kiln", "settings", "set", "signing-key-for-builds", "-");
        Assert.True(set.ExitCode == 0, set.Stderr);
        Assert.Contains(secret.PublicKey.ToString(), set.StdoutText, StringComparison.Ordinal);
        Assert.Contains(secret.PublicKey.ToString(), SshTests.Shell(kiln, alice, null, "kiln", "settings").StdoutText, StringComparison.Ordinal);

        // What Kiln builds for her is signed with it: stock Nix sees the signature.
        var drv = Dag.WriteSingle(client, workspace, "signed", $"echo {Guid.NewGuid():N}; mkdir $out");
        var output = client.Ok(kiln, [.. alice.Environment, "nix-build", "--store", Store, drv, "--no-out-link"]).StdoutText.Trim();
        var info = client.Ok(kiln, [.. alice.Environment, "nix", "path-info", "--sigs", "--store", Store, output]).StdoutText;
        Assert.Contains("alices-cache-1:", info, StringComparison.Ordinal);

        // Her netrc (for her push-to caches) the same way: on standard input only, shown by its machines, sealed at rest.
        Assert.Equal(1, SshTests.Shell(kiln, alice, null, "kiln", "settings", "set", "netrc", "machine", "cache.example.org", "password", "hunter2-on-the-line").ExitCode);
        Assert.Equal(1, SshTests.Shell(kiln, alice, null, "kiln", "settings", "set", "'ne''trc'", "'machine cache.example.org password hunter2-quoted'").ExitCode); // (quoting hides nothing from the log's redaction)
        var netrc = SshTests.Shell(kiln, alice, "machine cache.example.org\n  login alice\n  password hunter2-piped\n", "kiln", "settings", "set", "netrc", "-");
        Assert.True(netrc.ExitCode == 0, netrc.Stderr);
        Assert.Contains("netrc = machine cache.example.org", netrc.StdoutText, StringComparison.Ordinal);
        var listed = SshTests.Shell(kiln, alice, null, "kiln", "settings").StdoutText;
        Assert.Matches(@"netrc\s+machine cache\.example\.org\s+account", listed);
        Assert.DoesNotContain("hunter2", listed, StringComparison.Ordinal);
        using (var database = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={Path.Combine(kiln.DataDirectory, "kiln.db")};Mode=ReadOnly"))
        {
            database.Open();
            using var select = database.CreateCommand();
            select.CommandText = "SELECT netrc FROM accounts WHERE name = 'alice'";
            var stored = (string)select.ExecuteScalar()!;
            Assert.NotEqual("", stored);
            Assert.DoesNotContain("hunter2", stored, StringComparison.Ordinal);
        }

        var secretHalf = secretText.Split(':')[1];
        Assert.DoesNotContain(secretHalf[..16], kiln.Log, StringComparison.Ordinal);
        Assert.DoesNotContain("hunter2", kiln.Log, StringComparison.Ordinal);
        Assert.Contains("signing-key-for-builds (value not logged)", kiln.Log, StringComparison.Ordinal);
        Assert.Contains("netrc (value not logged)", kiln.Log, StringComparison.Ordinal);
    }

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

    [Theory]
    [InlineData("2.3.7")]
    [InlineData("2.34.8")]
    public void A_derivations_own_settings_are_ignored_until_its_account_reads_them_and_its_tags_are_kept(string version)
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For(version);
        using var kiln = new KilnProcess(ssh: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice", "store:read,store:write,build:read,build:write,account:write");
        Dag.WriteBusybox(client, workspace);
        string Sleeper(string name)
        {
            File.WriteAllText(client.HostPath($"{workspace}/{name}.nix"), $$"""
                let bb = ./bb; in derivation {
                  name = "{{name}}"; system = "x86_64-linux"; builder = "${bb}/bin/sh"; PATH = "${bb}/bin";
                  KILN_TIMEOUT = "2"; KILN_TAG_SUITE = "slow-{{name}}";
                  args = [ "-c" "echo {{Guid.NewGuid():N}}; sleep 4; mkdir $out" ];
                }
                """);
            return $"{workspace}/{name}.nix";
        }

        string[] Build(string drv) => [.. alice.Environment, "nix-build", "--store", Store, drv, "--no-out-link"];

        // Off by default: the attribute is a plain environment variable, the build runs its four seconds. Its tag is
        // kept with the build for the account (tags need no setting).
        // The account's tags setting is given to every build as well.
        kiln.Cli("settings", "set", "alice", "tags", "team=web");
        client.Ok(kiln, Build(Sleeper("ignored")));
        Assert.Contains("ignored", SshTests.Shell(kiln, alice, null, "kiln", "builds", "list", "--tag", "suite=slow-ignored").StdoutText, StringComparison.Ordinal);
        Assert.Contains("ignored", SshTests.Shell(kiln, alice, null, "kiln", "builds", "list", "--tag", "team=web").StdoutText, StringComparison.Ordinal);

        // The account turns it on: the derivation's own timeout holds, with Nix's message.
        Assert.Contains("settings-from-drv-env = 1", SshTests.Shell(kiln, alice, null, "kiln", "settings", "set", "settings-from-drv-env", "on").StdoutText, StringComparison.Ordinal);
        var limited = client.Run(kiln, Build(Sleeper("limited")));
        Assert.NotEqual(0, limited.ExitCode);
        Assert.Contains("timed out after 2 seconds", limited.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task With_reuse_build_failures_a_derivation_that_failed_fails_again_at_once_unbuilt()
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For("2.34.8");
        using var kiln = new KilnProcess(ssh: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var salt = Guid.NewGuid().ToString("N");
        var broken = Dag.WriteSingle(client, workspace, "broken", $"echo {salt}; echo it broke >&2; exit 3");
        string[] Build(string[] environment) => [.. environment, "nix-build", "--store", Store, broken, "--no-out-link"];
        async Task<int> BuildsAsync()
        {
            await using var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db"));
            return (await metadata.ListBuildsAsync(null, 100, CancellationToken.None)).Count(b => b.DrvPath.EndsWith("-broken.drv", StringComparison.Ordinal));
        }

        // Off (the default): each request builds it again.
        Assert.NotEqual(0, client.Run(kiln, Build(alice.Environment)).ExitCode);
        Assert.NotEqual(0, client.Run(kiln, Build(alice.Environment)).ExitCode);
        Assert.Equal(2, await BuildsAsync());

        // On: the failure answers again, saying which build it was; nothing is built.
        kiln.Cli("settings", "set", "alice", "reuse-build-failures", "on");
        var reused = client.Run(kiln, Build(alice.Environment));
        Assert.NotEqual(0, reused.ExitCode);
        Assert.Matches(@"kiln: reusing the failed build [0-9]+ of '/nix/store/[a-z0-9]{32}-broken\.drv' from .* UTC \(reuse-build-failures is on", reused.Stderr);
        Assert.True(reused.Stderr.Contains("failed with exit code 3", StringComparison.Ordinal), reused.Stderr);
        Assert.Equal(2, await BuildsAsync());

        // A session turns it off for itself: built again.
        string[] fresh = [.. alice.Environment[..^1], alice.Environment[^1] + " -o SetEnv=KILN_REUSE_BUILD_FAILURES=off"];
        Assert.NotEqual(0, client.Run(kiln, Build(fresh)).ExitCode);
        Assert.Equal(3, await BuildsAsync());
    }

    // Six builds of three seconds each, printing their NIX_BUILD_CORES, for one account.
    private static string WriteSix(NixClient client, string workspace, string name, string salt)
    {
        Dag.WriteBusybox(client, workspace);
        File.WriteAllText(client.HostPath($"{workspace}/{name}.nix"), $$"""
            let bb = ./bb; mk = i: derivation {
              name = "{{name}}-${toString i}"; system = "x86_64-linux"; builder = "${bb}/bin/sh"; PATH = "${bb}/bin";
              salt = "{{salt}}";
              args = [ "-c" "echo {{name}} ${toString i} cores=$NIX_BUILD_CORES; sleep 3; echo ${toString i} > $out" ];
            }; in builtins.genList mk 6
            """);
        return $"{workspace}/{name}.nix";
    }

    [Theory]
    [InlineData("2.3.7")]
    [InlineData("2.34.8")]
    public async Task An_accounts_max_jobs_holds_its_builds_in_line_saying_so_and_its_max_cpu_is_their_NIX_BUILD_CORES(string version)
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For(version);
        using var kiln = new KilnProcess(ssh: true, arguments: ["--max-jobs", "6", "--cores", "2"]);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice");
        var bob = SshTests.NewLogin(client, kiln, "bob");
        Assert.Contains("max-jobs = 2", kiln.Cli("settings", "set", "alice", "max-jobs", "2"), StringComparison.Ordinal);
        kiln.Cli("settings", "set", "alice", "max-cpu", "1");
        var salt = Guid.NewGuid().ToString("N")[..8];

        // Six builds asked at once (the server has six slots): two of them run at a time, the others wait, told why;
        // a session asking for more jobs (SetEnv KILN_MAX_JOBS=6) cannot loosen its account's limit.
        string[] loosening = [.. alice.Environment[..^1], alice.Environment[^1] + " -o SetEnv=KILN_MAX_JOBS=6"];
        var run = client.Ok(kiln, [.. loosening, "nix-build", "--store", Store, WriteSix(client, workspace, "six" + salt, salt), "--no-out-link"]);
        Assert.True(run.Stderr.Contains("': account limit 2 running, ", StringComparison.Ordinal), run.Stderr);
        Assert.Equal(6, run.Stderr.Split("cores=1").Length - 1);
        Assert.DoesNotContain("cores=2", run.Stderr, StringComparison.Ordinal);

        // The build records say when each ran: never more than two at once (and two did run together).
        await using (var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db")))
        {
            var builds = (await metadata.ListBuildsAsync(null, 100, CancellationToken.None)).Where(b => b.DrvPath.Contains("six" + salt, StringComparison.Ordinal)).ToList();
            Assert.Equal(6, builds.Count);
            Assert.All(builds, b => Assert.True(b.Succeeded && b.RanFrom is not null, $"build {b.Id}: {b.Error}"));
            // (Whole seconds: a build that began after another ended never shares a second-interval [ran, stopped) with it.)
            var most = builds.Max(b => builds.Count(o => o.RanFrom <= b.RanFrom && b.RanFrom < o.Stopped));
            Assert.Equal(2, most);
            Assert.True(builds.Max(b => b.Stopped) - builds.Min(b => b.RanFrom!.Value) >= 8, "six 3-second builds two at a time take at least nine seconds");
        }

        // Another account is held by neither setting: its six run together, with the server's two cores each.
        var bobs = client.Ok(kiln, [.. bob.Environment, "nix-build", "--store", Store, WriteSix(client, workspace, "bobs" + salt, salt), "--no-out-link"]);
        Assert.DoesNotContain("account limit", bobs.Stderr, StringComparison.Ordinal);
        Assert.Equal(6, bobs.Stderr.Split("cores=2").Length - 1);
    }

    [Theory]
    [InlineData("2.3.7")]
    [InlineData("2.34.8")]
    public async Task An_accounts_quotas_refuse_a_build_before_it_starts_and_an_upload_before_it_is_registered(string version)
    {
        NixClient.RequireEndToEnd();
        var client = NixClient.For(version);
        using var kiln = new KilnProcess(ssh: true);
        using var workspace = client.NewWorkspace();
        var alice = SshTests.NewLogin(client, kiln, "alice", "store:read,store:write,build:read,build:write,account:write");
        var salt = Guid.NewGuid().ToString("N");
        string[] Build(string drv) => [.. alice.Environment, "nix-build", "--store", Store, drv, "--no-out-link"];

        // The account may not set its own quota; the operator sets one second of CPU a month.
        var refusedSet = SshTests.Shell(kiln, alice, null, "kiln", "settings", "set", "max-cpu-hours-per-month", "100");
        Assert.Contains("max-cpu-hours-per-month is a quota: only the operator changes it", refusedSet.Stderr + refusedSet.StdoutText, StringComparison.Ordinal);
        kiln.Cli("settings", "set", "alice", "max-cpu-hours-per-month", "1s");

        // Under the quota a build runs (two seconds of CPU); past it, the next is refused before it starts. The loop is
        // bounded by CPU time (ulimit -t), not by the clock: on a busy CI machine two seconds of wall time gave it only
        // 0.76 s of CPU, under the quota, and the next build ran.
        var burner = Dag.WriteSingle(client, workspace, "burner", $"echo {salt}; sh -c 'ulimit -t 2; while :; do :; done' || true; echo burnt > $out");
        var burnt = client.Ok(kiln, Build(burner)).StdoutText.Trim();
        var next = Dag.WriteSingle(client, workspace, "next", $"echo {salt}; echo next > $out");
        var refused = client.Run(kiln, Build(next));
        if (refused.ExitCode == 0)
        {
            await using var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db"));
            Assert.Fail(string.Join("\n", (await metadata.ListBuildsAsync(null, 100, CancellationToken.None)).Select(b => $"{b.DrvPath} {b.AccountId} {b.CpuUserMicroseconds} {b.CpuSystemMicroseconds} {b.Started}"))
                + "\n" + kiln.Cli("settings", "show", "alice") + "\n" + refused.Stderr);
        }

        Assert.Matches(@"kiln: CPU quota exceeded: [0-9.]+ of 0\.0003 CPU hours this month", refused.Stderr);
        await using (var metadata = new SqliteMetadataStore(Path.Combine(kiln.DataDirectory, "kiln.db")))
        {
            Assert.DoesNotContain(await metadata.ListBuildsAsync(null, 100, CancellationToken.None), b => b.DrvPath.EndsWith("-next.drv", StringComparison.Ordinal));
        }

        // What is built already costs nothing and is not refused; the operator lifting the quota lets builds start again.
        Assert.Equal(burnt, client.Ok(kiln, Build(burner)).StdoutText.Trim());
        kiln.Cli("settings", "unset", "alice", "max-cpu-hours-per-month");
        client.Ok(kiln, Build(next));

        // Storage: with 1 KiB left, an upload of 4 KiB is refused with the figures, and nothing is registered.
        var (_, stored) = Storage(kiln, alice);
        kiln.Cli("settings", "set", "alice", "max-storage", (stored + 1024).ToString(System.Globalization.CultureInfo.InvariantCulture));
        File.WriteAllText(client.HostPath($"{workspace}/big.txt"), new string('x', 4096) + salt);
        var upload = client.Run(kiln, [.. alice.Environment, "nix-store", "--store", Store, "--add", $"{workspace}/big.txt"]);
        Assert.NotEqual(0, upload.ExitCode);
        Assert.Contains("kiln: storage quota exceeded: ", upload.Stderr, StringComparison.Ordinal);
        Assert.Contains("delete paths or ask for more", upload.Stderr, StringComparison.Ordinal);
        Assert.Equal(stored, Storage(kiln, alice).Bytes);

        // A small one fits.
        var (uploaded, downloaded) = Moved(kiln, alice);
        File.WriteAllText(client.HostPath($"{workspace}/small.txt"), salt);
        var small = client.Ok(kiln, [.. alice.Environment, "nix-store", "--store", Store, "--add", $"{workspace}/small.txt"]).StdoutText.Trim();
        Assert.True(Storage(kiln, alice).Bytes > stored);

        // The usage report counts the bytes moved today: the upload, then a download of it (NarFromPath).
        var narSize = Storage(kiln, alice).Bytes - stored;
        Assert.Equal((uploaded + narSize, downloaded), Moved(kiln, alice));
        client.Ok(kiln, [.. alice.Environment, "nix", "copy", "--no-check-sigs", "--from", Store, "--to", $"local?root={workspace}/pulled", small]);
        Assert.Equal((uploaded + narSize, downloaded + narSize), Moved(kiln, alice));
    }

    // Today's bytes uploaded and downloaded, as the account's usage report (JSON) gives them.
    private static (long Uploaded, long Downloaded) Moved(KilnProcess kiln, SshTests.Login login)
    {
        using var usage = System.Text.Json.JsonDocument.Parse(SshTests.Shell(kiln, login, null, "kiln", "usage", "--json").StdoutText);
        var today = DateTime.UtcNow.ToString("yyyy-MM-dd", System.Globalization.CultureInfo.InvariantCulture);
        return usage.RootElement.GetProperty("periods").EnumerateArray().Where(p => p.GetProperty("start").GetString() == today)
            .Select(p => (p.GetProperty("uploadedBytes").GetInt64(), p.GetProperty("downloadedBytes").GetInt64())).SingleOrDefault();
    }

    // The account's storage now, as its usage report (JSON) gives it.
    private static (long Paths, long Bytes) Storage(KilnProcess kiln, SshTests.Login login)
    {
        using var usage = System.Text.Json.JsonDocument.Parse(SshTests.Shell(kiln, login, null, "kiln", "usage", "--json").StdoutText);
        var storage = usage.RootElement.GetProperty("storage");
        return (storage.GetProperty("paths").GetInt64(), storage.GetProperty("narBytes").GetInt64());
    }
}
