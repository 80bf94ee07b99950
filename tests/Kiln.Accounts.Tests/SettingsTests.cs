using Kiln.Protocol;
using Kiln.Store.Metadata;

namespace Kiln.Accounts.Tests;

/// <summary>The settings hierarchy's resolution: server → account → key → session, limits only tightening, finals holding.</summary>
public sealed class SettingsTests
{
    private const string Key = "key:SHA256:abc";

    public static TheoryData<string, long, string[], string?, long, SettingLevel, bool> Cases() => new()
    {
        // what, server, stored rows (scope|value|final), session environment value, expected value, origin, final
        { "nothing set: the server's", 600, [], null, 600, SettingLevel.Server, false },
        { "no server limit: the account's", 0, ["|300|0"], null, 300, SettingLevel.Account, false },
        { "the account tightens", 600, ["|300|0"], null, 300, SettingLevel.Account, false },
        { "the account cannot loosen", 600, ["|900|0"], null, 600, SettingLevel.Server, false },
        { "0 (none) loosens nothing", 600, ["|0|0"], null, 600, SettingLevel.Server, false },
        { "the key tightens the account", 600, ["|300|0", $"{Key}|120|0"], null, 120, SettingLevel.Key, false },
        { "the key cannot loosen the account", 600, ["|300|0", $"{Key}|500|0"], null, 300, SettingLevel.Account, false },
        { "another key's is not this key's", 600, ["key:SHA256:other|60|0"], null, 600, SettingLevel.Server, false },
        { "the session tightens", 600, ["|300|0"], "2", 2, SettingLevel.Session, false },
        { "the session cannot loosen", 600, ["|300|0"], "1h", 300, SettingLevel.Account, false },
        { "a final account value holds against the key", 600, ["|300|1", $"{Key}|120|0"], null, 300, SettingLevel.Account, true },
        { "a final account value holds against the session", 600, ["|300|1"], "2", 300, SettingLevel.Account, true },
        { "a final key value holds against the session", 0, [$"{Key}|100|1"], "2", 100, SettingLevel.Key, true },
        { "a looser final value fixes what is in effect", 60, ["|300|1"], "2", 60, SettingLevel.Server, true },
        { "a malformed session value is left out", 600, [], "soon", 600, SettingLevel.Server, false },
        { "units", 0, [], "15m", 900, SettingLevel.Session, false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_timeout_resolves_through_the_levels(string what, long server, string[] rows, string? session, long value, SettingLevel origin, bool final)
    {
        var stored = rows.Select(r => r.Split('|')).Select(p => new SettingRecord(p[0], "timeout", p[1], p[2] == "1")).ToList();
        var environment = session is null ? null : new Dictionary<string, string> { ["KILN_TIMEOUT"] = session };
        var timeout = Settings.Resolve(new Dictionary<string, long> { ["timeout"] = server }, stored, Key, environment).Single(s => s.Definition == Settings.Timeout);
        Assert.True((value, origin, final) == (timeout.Value, timeout.Origin, timeout.Final), $"{what}: {timeout.Value} {timeout.Origin} {timeout.Final}");
    }

    [Fact]
    public void Each_setting_is_resolved_alone_from_its_own_variable()
    {
        var environment = new Dictionary<string, string> { ["KILN_MAX_SILENT_TIME"] = "30", ["KILN_MAX_BUILD_LOG_SIZE"] = "1MiB", ["KILN_TAG_CI"] = "1" };
        var all = Settings.Resolve(new Dictionary<string, long>(), [new SettingRecord("", "max-build-log-size", "4096", false)], null, environment)
            .ToDictionary(s => s.Definition.Name, s => (s.Value, s.Origin));
        Assert.Equal((0L, SettingLevel.Server), all["timeout"]);
        Assert.Equal((30L, SettingLevel.Session), all["max-silent-time"]);
        Assert.Equal((4096L, SettingLevel.Account), all["max-build-log-size"]); // 1 MiB would loosen it
    }

    public static TheoryData<string, long, string[], string?, long, SettingLevel> PreferenceCases() => new()
    {
        // what, server's min-cpu, stored rows (scope|value|final), session value, expected value, origin
        { "nothing set: the server's", 1, [], null, 1, SettingLevel.Server },
        { "the account raises a preference", 1, ["|4|0"], null, 4, SettingLevel.Account },
        { "the key lowers it again", 1, ["|4|0", $"{Key}|2|0"], null, 2, SettingLevel.Key },
        { "the session chooses too", 1, ["|4|0"], "3", 3, SettingLevel.Session },
        { "0 leaves the level above", 1, ["|4|0", $"{Key}|0|0"], null, 4, SettingLevel.Account },
        { "a final preference holds", 1, ["|4|1", $"{Key}|2|0"], "3", 4, SettingLevel.Account },
    };

    [Theory]
    [MemberData(nameof(PreferenceCases))]
    public void A_preference_is_chosen_by_the_narrowest_level_unless_final(string what, long server, string[] rows, string? session, long value, SettingLevel origin)
    {
        var stored = rows.Select(r => r.Split('|')).Select(p => new SettingRecord(p[0], "min-cpu", p[1], p[2] == "1")).ToList();
        var environment = session is null ? null : new Dictionary<string, string> { ["KILN_MIN_CPU"] = session };
        var minCpu = Settings.Resolve(new Dictionary<string, long> { ["min-cpu"] = server }, stored, Key, environment).Single(s => s.Definition == Settings.MinCpu);
        Assert.True((value, origin) == (minCpu.Value, minCpu.Origin), $"{what}: {minCpu.Value} {minCpu.Origin}");
    }

    [Fact]
    public void A_key_and_a_session_cannot_raise_the_accounts_max_jobs()
    {
        var stored = new[] { new SettingRecord("", "max-jobs", "2", false), new SettingRecord(Key, "max-jobs", "8", false) };
        var environment = new Dictionary<string, string> { ["KILN_MAX_JOBS"] = "16", ["KILN_MAX_CPU"] = "1" };
        var all = Settings.ByName(Settings.Resolve(new Dictionary<string, long> { ["max-cpu"] = 4 }, stored, Key, environment));
        Assert.Equal(2, all["max-jobs"]);
        Assert.Equal(1, all["max-cpu"]); // a session may ask for less
    }

    [Fact]
    public void A_quota_is_the_accounts_alone()
    {
        // Keys' rows and the session's environment are not read for quotas (the service refuses to store a key's).
        var stored = new[] { new SettingRecord("", "max-storage", "1000", false), new SettingRecord(Key, "max-storage", "10", false) };
        var environment = new Dictionary<string, string> { ["KILN_MAX_STORAGE"] = "5", ["KILN_MAX_CPU_HOURS_PER_MONTH"] = "1" };
        var all = Settings.Resolve(new Dictionary<string, long>(), stored, Key, environment).ToDictionary(s => s.Definition.Name);
        Assert.Equal((1000L, SettingLevel.Account), (all["max-storage"].Value, all["max-storage"].Origin));
        Assert.Equal((0L, SettingLevel.Server), (all["max-cpu-hours-per-month"].Value, all["max-cpu-hours-per-month"].Origin));
    }

    [Fact]
    public void Push_to_is_the_accounts_text_never_a_keys_a_sessions_or_a_derivations()
    {
        var stored = new[]
        {
            new SettingRecord("", "push-to", "https://cache.example.org/a file:///srv/caches/a", false),
            new SettingRecord(Key, "push-to", "https://elsewhere.example.org", false),
            new SettingRecord("", "push-reused", "1", false),
            new SettingRecord("", "settings-from-drv-env", "1", false),
        };
        var environment = new Dictionary<string, string> { ["KILN_PUSH_TO"] = "https://session.example.org", ["KILN_PUSH_REUSED"] = "0" };
        var derivation = new Dictionary<string, string> { ["KILN_PUSH_TO"] = "https://drv.example.org" };
        var all = Settings.Resolve(new Dictionary<string, long>(), stored, Key, environment, derivation);
        var pushTo = all.Single(s => s.Definition == Settings.PushTo);
        Assert.Equal(("https://cache.example.org/a file:///srv/caches/a", SettingLevel.Account), (pushTo.Text, pushTo.Origin));
        Assert.Equal("https://cache.example.org/a file:///srv/caches/a", Settings.TextOf(all, Settings.PushTo));
        Assert.Equal(1, Settings.ByName(all)["push-reused"]);
        Assert.Equal("push-to                 https://cache.example.org/a file:///srv/caches/a account", pushTo.ToLine());
        Assert.Equal("https://cache.example.org/a file:///srv/caches/a", pushTo.JsonValue);

        // Nothing set: none. A row made invalid by hand is left out, as a malformed number is.
        var none = Settings.Resolve(new Dictionary<string, long>(), [new SettingRecord("", "push-to", "ftp://x", false)], null, null).Single(s => s.Definition == Settings.PushTo);
        Assert.Equal(("", SettingLevel.Server, "none"), (none.Text, none.Origin, none.Shown));
    }

    [Fact]
    public void Tags_come_from_the_account_or_the_key_and_are_kept_checked()
    {
        Assert.Equal("ci=github team=web", Settings.Tags.Normalize(" team=api ci=github team=web "));
        Assert.Equal(ErrorKind.Invalid, Assert.Throws<KilnException>(() => Settings.Tags.Normalize("no-equals")).Kind);
        Assert.Equal(ErrorKind.Invalid, Assert.Throws<KilnException>(() => Settings.Tags.Normalize(string.Join(' ', Enumerable.Range(0, 17).Select(i => $"t{i}=x")))).Kind);
        var stored = new[] { new SettingRecord("", "tags", "team=web", false), new SettingRecord(Key, "tags", "team=web runner=7", false) };
        var all = Settings.Resolve(new Dictionary<string, long>(), stored, Key, new Dictionary<string, string> { ["KILN_TAGS"] = "x=y" });
        Assert.Equal([new BuildTag("team", "web"), new BuildTag("runner", "7")], Settings.TagsOf(Settings.TextOf(all, Settings.Tags)));
        var final = Settings.Resolve(new Dictionary<string, long>(), [new SettingRecord("", "tags", "team=web", true), stored[1]], Key, null);
        Assert.Equal("team=web", Settings.TextOf(final, Settings.Tags)); // the account's final holds
    }

    [Theory]
    [InlineData("  https://a.example.org   https://a.example.org file:///srv/x?compression=zstd ", "https://a.example.org file:///srv/x?compression=zstd")]
    [InlineData("", "")]
    public void Push_to_is_kept_canonical(string text, string kept) => Assert.Equal(kept, Settings.PushTo.Normalize(text));

    [Theory]
    [InlineData("https://user:password@cache.example.org")]
    [InlineData("ssh-ng://host")]
    [InlineData("https://a.example.org ftp://b")]
    public void Push_to_refuses_what_Kiln_cannot_push_to(string text) =>
        Assert.Equal(ErrorKind.Invalid, Assert.Throws<KilnException>(() => Settings.PushTo.Normalize(text)).Kind);

    [Fact]
    public void Sharing_names_accounts_of_the_account_never_of_a_key_a_session_or_a_derivation()
    {
        Assert.Equal("team-ci bob", Settings.TrustedAccounts.Normalize(" team-ci,bob  team-ci "));
        Assert.Equal("", Settings.ShareWith.Normalize(""));
        foreach (var bad in new[] { "Bob", "(deleted 3)", "../x", string.Join(' ', Enumerable.Range(0, 33).Select(i => $"a{i}")) })
        {
            Assert.Equal(ErrorKind.Invalid, Assert.Throws<KilnException>(() => Settings.ShareWith.Normalize(bad)).Kind);
        }

        var stored = new[]
        {
            new SettingRecord("", "trusted-accounts", "bob", false),
            new SettingRecord(Key, "trusted-accounts", "mallory", false),
            new SettingRecord(Key, "share-with", "mallory", false),
            new SettingRecord("", "settings-from-drv-env", "1", false),
        };
        var environment = new Dictionary<string, string> { ["KILN_TRUSTED_ACCOUNTS"] = "mallory", ["KILN_SHARE_WITH"] = "mallory" };
        var all = Settings.Resolve(new Dictionary<string, long>(), stored, Key, environment, environment);
        Assert.Equal("bob", Settings.TextOf(all, Settings.TrustedAccounts));
        Assert.Equal("", Settings.TextOf(all, Settings.ShareWith));
        Assert.True(Settings.TrustedAccounts.AccountWide && !Settings.TrustedAccounts.OperatorOnly);
    }

    [Fact]
    public void A_stored_value_is_read_in_its_canonical_unit()
    {
        // The service stores what Parse gave (seconds for CPU hours): read back as that, not as hours.
        var stored = new[] { new SettingRecord("", "max-cpu-hours-per-month", Settings.MaxCpuHoursPerMonth.Parse("2s").ToString(System.Globalization.CultureInfo.InvariantCulture), false) };
        Assert.Equal(2, Settings.ByName(Settings.Resolve(new Dictionary<string, long>(), stored, null, null))["max-cpu-hours-per-month"]);
    }

    [Fact]
    public void A_derivations_attributes_are_read_only_where_the_account_or_key_turns_them_on_and_only_tighten()
    {
        var derivation = new Dictionary<string, string> { ["KILN_TIMEOUT"] = "2", ["KILN_MAX_CPU"] = "64", ["KILN_SETTINGS_FROM_DRV_ENV"] = "on" };
        var server = new Dictionary<string, long> { ["timeout"] = 600, ["max-cpu"] = 4 };
        IReadOnlyDictionary<string, long> With(params SettingRecord[] rows) => Settings.ByName(Settings.Resolve(server, rows, Key, null, derivation));

        // Off by default, and a derivation cannot turn it on for itself.
        Assert.Equal((600L, 4L, 0L), (With()["timeout"], With()["max-cpu"], With()["settings-from-drv-env"]));

        // The account turns it on: the derivation tightens the timeout, and cannot loosen max-cpu.
        var on = With(new SettingRecord("", "settings-from-drv-env", "1", false));
        Assert.Equal((2L, 4L), (on["timeout"], on["max-cpu"]));
        Assert.Equal(SettingLevel.Derivation, Settings.Resolve(server, [new SettingRecord("", "settings-from-drv-env", "1", false)], Key, null, derivation).Single(s => s.Definition == Settings.Timeout).Origin);

        // A key turns it off again for its sessions, unless the account made it final.
        Assert.Equal(600, With(new SettingRecord("", "settings-from-drv-env", "1", false), new SettingRecord(Key, "settings-from-drv-env", "0", false))["timeout"]);
        Assert.Equal(2, With(new SettingRecord("", "settings-from-drv-env", "1", true), new SettingRecord(Key, "settings-from-drv-env", "0", false))["timeout"]);
    }

    [Fact]
    public void The_sessions_environment_is_read_unless_settings_from_ssh_env_is_off()
    {
        var environment = new Dictionary<string, string> { ["KILN_TIMEOUT"] = "2", ["KILN_SETTINGS_FROM_SSH_ENV"] = "on" };
        Assert.Equal(2, Settings.ByName(Settings.Resolve(new Dictionary<string, long>(), [], Key, environment))["timeout"]);
        var off = new[] { new SettingRecord("", "settings-from-ssh-env", "0", false) };
        Assert.Equal(0, Settings.ByName(Settings.Resolve(new Dictionary<string, long>(), off, Key, environment))["timeout"]); // (nor can the session turn it on)

        // A switch that is not a gate is the narrowest level's choice either way, unless a level above made it final.
        var keep = new[] { new SettingRecord("", "keep-builds-running", "1", false) };
        Assert.Equal(0, Settings.ByName(Settings.Resolve(new Dictionary<string, long>(), keep, Key, new Dictionary<string, string> { ["KILN_KEEP_BUILDS_RUNNING"] = "off" }))["keep-builds-running"]);
        keep = [new SettingRecord("", "keep-builds-running", "1", true)];
        Assert.Equal(1, Settings.ByName(Settings.Resolve(new Dictionary<string, long>(), keep, Key, new Dictionary<string, string> { ["KILN_KEEP_BUILDS_RUNNING"] = "off" }))["keep-builds-running"]);
    }

    [Fact]
    public void Values_show_as_their_kind()
    {
        Assert.Equal("none", Settings.MaxJobs.Format(0));
        Assert.Equal("4", Settings.MaxJobs.Format(4));
        Assert.Equal("default", Settings.DefaultCpu.Format(0));
        Assert.Equal("0.5 h", Settings.MaxCpuHoursPerMonth.Format(1800));
        Assert.Equal(("on", "off"), (Settings.SettingsFromSshEnv.Format(1), Settings.SettingsFromDrvEnv.Format(0)));
        Assert.Equal("max-jobs                4                account", new EffectiveSetting(Settings.MaxJobs, 4, SettingLevel.Account, false).ToLine());
    }

    [Theory]
    [InlineData("max-jobs", "4", 4)]
    [InlineData("max-cpu", " 16 ", 16)]
    [InlineData("max-cpu-hours-per-month", "10", 36_000)]
    [InlineData("max-cpu-hours-per-month", "0.5", 1800)]
    [InlineData("max-cpu-hours-per-month", "90m", 5400)]
    [InlineData("max-cpu-hours-per-month", "2s", 2)]
    [InlineData("max-storage", "10GiB", 10L << 30)]
    [InlineData("settings-from-drv-env", "on", 1)]
    [InlineData("settings-from-drv-env", "False", 0)]
    [InlineData("max-cpu-hours-per-month", "0.1s", 1)] // a tiny quota rounds up, never to 0 (none)
    [InlineData("timeout", "90", 90)]
    [InlineData("timeout", "2h", 7200)]
    [InlineData("timeout", " 1d ", 86_400)]
    [InlineData("max-build-log-size", "64MiB", 64L << 20)]
    [InlineData("max-build-log-size", "1G", 1L << 30)]
    [InlineData("max-build-log-size", "0", 0)]
    [InlineData("max-build-log-size", "5k", 5 << 10)]
    [InlineData("max-build-log-size", "5mb", 5 << 20)]
    [InlineData("timeout", "3650d", 315_360_000)]
    public void Values_are_read_with_their_units(string name, string text, long expected) => Assert.Equal(expected, Settings.Find(name).Parse(text));

    [Theory]
    [InlineData("timeout", "")]
    [InlineData("timeout", "-5")]
    [InlineData("timeout", "5 weeks")]
    [InlineData("timeout", "99999999999999999999")]
    [InlineData("timeout", "99999999999999")] // past ten years: no TimeSpan trouble later
    [InlineData("timeout", "3651d")]
    [InlineData("max-build-log-size", "5i")]
    [InlineData("max-build-log-size", "9999999T")]
    [InlineData("max-build-log-size", "12 apples")]
    [InlineData("max-jobs", "2.5")]
    [InlineData("max-jobs", "4k")]
    [InlineData("max-jobs", "1000001")]
    [InlineData("max-cpu-hours-per-month", "-1")]
    [InlineData("max-cpu-hours-per-month", "1e9")]
    [InlineData("max-cpu-hours-per-month", "99999999999999999999999999999")]
    [InlineData("max-cpu-hours-per-month", "1d")]
    [InlineData("settings-from-drv-env", "maybe")]
    [InlineData("settings-from-drv-env", "2")]
    public void Malformed_values_are_refused_with_the_settings_name(string name, string text)
    {
        var error = Assert.Throws<KilnException>(() => Settings.Find(name).Parse(text));
        Assert.Equal(ErrorKind.Invalid, error.Kind);
        Assert.Contains(name, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_unknown_setting_names_the_ones_there_are()
    {
        var error = Assert.Throws<KilnException>(() => Settings.Find("max-fun"));
        Assert.Contains("timeout, max-silent-time, max-build-log-size, max-jobs, max-cpu, min-cpu, default-cpu, max-mem, min-mem, max-storage, max-cpu-hours-per-month, retention, retention-builds, keep-builds-running, reuse-build-failures, reuse-build-timeouts, settings-from-ssh-env, settings-from-drv-env", error.Message, StringComparison.Ordinal);
    }
}
