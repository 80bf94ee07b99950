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

    [Theory]
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
        Assert.Contains("timeout, max-silent-time, max-build-log-size", error.Message, StringComparison.Ordinal);
    }
}
