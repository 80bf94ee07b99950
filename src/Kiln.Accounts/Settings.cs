using System.Globalization;
using Kiln.Protocol;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Accounts;

/// <summary>Where a setting's value came from, from the widest level to the narrowest: later levels win where they may.</summary>
public enum SettingLevel
{
    /// <summary>kiln serve's command line (the operator's limits for every build).</summary>
    Server,

    /// <summary>The account's own (<c>kiln settings set ACCOUNT …</c>).</summary>
    Account,

    /// <summary>The SSH key's or token's the session came with (<c>--key</c>).</summary>
    Key,

    /// <summary>The SSH session's environment (<c>SetEnv KILN_TIMEOUT=60</c>; only while <c>settings-from-ssh-env</c> is on).</summary>
    Session,

    /// <summary>The derivation's own attributes (<c>KILN_TIMEOUT = "60";</c>; only where <c>settings-from-drv-env</c> is on).</summary>
    Derivation,
}

/// <summary>What a setting's value is: a duration in seconds, a size in bytes, a number (cores, jobs, hours).</summary>
public enum SettingKind
{
    Duration,
    Bytes,
    Count,

    /// <summary>A length of CPU time, kept in seconds: hours as a plain or decimal number (<c>10</c>, <c>0.5</c>), or <c>90m</c>, <c>30s</c>.</summary>
    Hours,

    /// <summary>On or off (<c>on</c>, <c>off</c>, <c>true</c>, <c>false</c>, <c>1</c>, <c>0</c>), kept as 1 or 0.</summary>
    Switch,

    /// <summary>
    /// Words (URLs), kept as the definition's <see cref="SettingDefinition.Canonical"/> writes them: set by the account
    /// (and, where not account-wide, its keys), a narrower level's replacing a wider one's unless that is final; never
    /// read from sessions or derivations.
    /// </summary>
    Text,
}

/// <summary>
/// One setting: its name, kind and what it does. A limit's zero means none, and every level below the server's may
/// only tighten it (a shorter timeout, a smaller log): a key never loosens what its account or the server caps.
/// </summary>
public sealed record SettingDefinition(string Name, SettingKind Kind, string Description)
{
    /// <summary>
    /// A preference, not a limit (<c>min-cpu</c>, <c>default-cpu</c>): a lower level's value replaces the one above it
    /// unless that one is final, and what uses it keeps it within the limits in effect (<c>min-cpu</c> within <c>max-cpu</c>).
    /// </summary>
    public bool Preference { get; init; }

    /// <summary>
    /// A quota (<c>max-storage</c>, <c>max-cpu-hours-per-month</c>): the operator sets it for an account; the account's
    /// own keys neither set nor lift it, and its keys' and sessions' values are not looked at (the quota is the account's).
    /// </summary>
    public bool Quota { get; init; }

    /// <summary>The operator's alone to set for an account (every quota; the upstream caches): the account's own keys neither set nor lift it.</summary>
    public bool OperatorOnly
    {
        get => _operatorOnly || Quota;
        init => _operatorOnly = value;
    }

    private readonly bool _operatorOnly;

    /// <summary>
    /// Kept with the account's upstream caches rather than with the other settings (<c>substituters</c>,
    /// <c>trusted-public-keys</c>; also <c>kiln account set</c>): the substituter reads them there.
    /// </summary>
    public bool Upstream { get; init; }

    /// <summary>
    /// Kept as the account's signing key rather than with the other settings (<c>signing-key-for-builds</c>; also
    /// <c>kiln signing-key create</c>): set from a secret key, shown by its public half only.
    /// </summary>
    public bool SigningKey { get; init; }

    /// <summary>
    /// A secret (<c>signing-key-for-builds</c>, <c>netrc</c>): given on standard input, never on a command line (which
    /// the server logs); listings show what it is for, never the secret itself.
    /// </summary>
    public bool Secret { get; init; }

    /// <summary>What an empty text value means (<c>none</c>, or the server's default).</summary>
    public string EmptyText { get; init; } = "none";

    /// <summary>The account's as a whole (<c>retention</c>; every quota): set for the account, never for a key, and not read from sessions or derivations.</summary>
    public bool AccountWide
    {
        get => _accountWide || Quota;
        init => _accountWide = value;
    }

    private readonly bool _accountWide;

    /// <summary>
    /// A gate: it decides which levels are read (<c>settings-from-ssh-env</c>, <c>settings-from-drv-env</c>), so it is
    /// set by the server, the account and its keys, never by the session or the derivation it would let in. A later
    /// level's value replaces an earlier one, unless that one is final.
    /// </summary>
    public bool Gate { get; init; }

    /// <summary>A text setting's check: its canonical form, or a <see cref="KilnException"/> (Invalid) saying what is wrong.</summary>
    public Func<string, string>? Canonical { get; init; }

    /// <summary>A value as it is kept: canonical text, or a number's digits.</summary>
    /// <exception cref="KilnException">It is not a value of this setting (Invalid).</exception>
    public string Normalize(string text) => Kind == SettingKind.Text
        ? (Canonical ?? (t => t.Trim()))(text ?? throw new ArgumentNullException(nameof(text)))
        : Parse(text).ToString(CultureInfo.InvariantCulture);

    /// <summary>Its value where the server's level does not name it (0 but for the switches that are on by default).</summary>
    public long Default { get; init; }

    /// <summary>The SSH environment variable that sets it for a session: <c>KILN_</c>, upper-cased, <c>-</c> read as <c>_</c>.</summary>
    public string EnvironmentVariable => "KILN_" + Name.ToUpperInvariant().Replace('-', '_');

    /// <summary>Parses a value as people write it (<c>90</c>, <c>90s</c>, <c>15m</c>, <c>2h</c>; <c>10MiB</c>, <c>1G</c>).</summary>
    /// <exception cref="KilnException">It is not one (Invalid).</exception>
    public long Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var trimmed = text.Trim();
        if (Kind == SettingKind.Hours)
        {
            return ParseHours(trimmed) ?? throw Invalid(text);
        }

        if (Kind == SettingKind.Switch)
        {
            return trimmed.ToLowerInvariant() switch
            {
                "on" or "true" or "yes" or "1" => 1,
                "off" or "false" or "no" or "0" => 0,
                _ => throw Invalid(text),
            };
        }

        var digits = trimmed.TakeWhile(char.IsAsciiDigit).Count();
        if (digits == 0 || digits > 15 || !long.TryParse(trimmed[..digits], NumberStyles.None, CultureInfo.InvariantCulture, out var number))
        {
            throw Invalid(text);
        }

        var unit = trimmed[digits..].Trim();
        long? scale = Kind switch
        {
            SettingKind.Duration => unit switch { "" or "s" => 1, "m" => 60, "h" => 3600, "d" => 86_400, _ => null },
            SettingKind.Count => unit.Length == 0 ? 1 : null,
            _ => unit.ToUpperInvariant() switch
            {
                "" or "B" => 1,
                "K" or "KB" or "KIB" => 1L << 10,
                "M" or "MB" or "MIB" => 1L << 20,
                "G" or "GB" or "GIB" => 1L << 30,
                "T" or "TB" or "TIB" => 1L << 40,
                _ => null,
            },
        };
        return scale is { } s && number <= Most / s ? number * s : throw Invalid(text);
    }

    private static long? ParseHours(string text)
    {
        var (number, scale) = text.EndsWith('s') ? (text[..^1], 1m) : text.EndsWith('m') ? (text[..^1], 60m) : text.EndsWith('h') ? (text[..^1], 3600m) : (text, 3600m);
        return decimal.TryParse(number.Trim(), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value) && value <= MaxDurationSeconds && value * scale <= MaxDurationSeconds
            ? (long)Math.Ceiling(value * scale) // (rounded up: a tiny quota must not become 0, which is none)
            : null;
    }

    /// <summary>The largest value of the setting's kind (a ceiling every use can hold: a duration becomes a TimeSpan).</summary>
    public long Most => Kind switch { SettingKind.Duration or SettingKind.Hours => MaxDurationSeconds, SettingKind.Count => MaxCount, SettingKind.Switch => 1, _ => long.MaxValue / 2 };

    /// <summary>The longest duration a setting takes: ten years.</summary>
    public const long MaxDurationSeconds = 10L * 365 * 86_400;

    /// <summary>The largest number a count takes (cores, jobs, hours).</summary>
    public const long MaxCount = 1_000_000;

    /// <summary>A value as the settings listing shows it (zero: a limit's none, a preference's "the server's choice").</summary>
    public string Format(long value) => Kind == SettingKind.Switch ? value == 0 ? "off" : "on" : value == 0 ? Preference ? "default" : "none" : Kind switch
    {
        SettingKind.Duration => $"{value} s",
        SettingKind.Bytes => $"{value} bytes",
        SettingKind.Hours => string.Create(CultureInfo.InvariantCulture, $"{value / 3600.0:0.####} h"),
        _ => value.ToString(CultureInfo.InvariantCulture),
    };

    private KilnException Invalid(string text) => new(ErrorKind.Invalid,
        $"'{(text.Length > 40 ? text[..40] + "…" : text)}' is not a value of {Name} ({Kind switch
        {
            SettingKind.Duration => "seconds, or 15m, 2h, 1d, at most ten years",
            SettingKind.Bytes => "bytes, or 64MiB, 1GiB",
            SettingKind.Hours => "hours, or 0.5, 90m, 30s",
            SettingKind.Switch => "on or off",
            _ => $"a whole number up to {MaxCount}",
        }}; 0 for {(Preference ? "the default" : "none")})");
}

/// <summary>A setting's value in effect, where it came from, and whether lower levels are held to it.</summary>
public sealed record EffectiveSetting(SettingDefinition Definition, long Value, SettingLevel Origin, bool Final)
{
    /// <summary>A text setting's value (empty: none).</summary>
    public string Text { get; init; } = "";

    /// <summary>The value as JSON documents give it: the text of a text setting, the number of any other.</summary>
    public object JsonValue => Definition.Kind == SettingKind.Text ? Text : Value;

    /// <summary>The value as listings show it.</summary>
    public string Shown => Definition.Kind == SettingKind.Text ? Text.Length == 0 ? Definition.EmptyText : Text : Definition.Format(Value);

    /// <summary>Its line in a settings listing (the shell's, the CLI's); <paramref name="server"/> names the server's level.</summary>
    public string ToLine(string server = "server") =>
        $"{Definition.Name,-23} {Shown,-16} {(Origin == SettingLevel.Server ? server : Origin.ToString().ToLowerInvariant())}{(Final ? ", final" : "")}";
}

/// <summary>
/// The settings registry and how a session's values are worked out: the server's value first, then the account's,
/// the key's or token's and the session's environment, each applied only where it tightens (limits) and no level
/// above it made the setting final.
/// </summary>
public static class Settings
{
    public static SettingDefinition Timeout { get; } = new("timeout", SettingKind.Duration, "The longest a build may run (Nix's timeout); 0: no limit of this level's.");

    public static SettingDefinition MaxSilentTime { get; } = new("max-silent-time", SettingKind.Duration, "The longest a build may print nothing (Nix's max-silent-time).");

    public static SettingDefinition MaxBuildLogSize { get; } = new("max-build-log-size", SettingKind.Bytes, "The most log a build may write (Nix's max-build-log-size).");

    public static SettingDefinition MaxJobs { get; } = new("max-jobs", SettingKind.Count, "The most of the account's builds that run at once (the rest wait in line, told why).");

    public static SettingDefinition MaxCpu { get; } = new("max-cpu", SettingKind.Count, "The most cores one build is given (NIX_BUILD_CORES, and its CPU share).");

    public static SettingDefinition MinCpu { get; } = new("min-cpu", SettingKind.Count, "The fewest cores one build is given, whatever its history says (within max-cpu).") { Preference = true };

    public static SettingDefinition DefaultCpu { get; } = new("default-cpu", SettingKind.Count, "The cores a build of a package never built before is given (within min-cpu and max-cpu).") { Preference = true };

    public static SettingDefinition MaxMem { get; } = new("max-mem", SettingKind.Bytes, "The most memory one build may use (its tmpfs files included).");

    public static SettingDefinition MinMem { get; } = new("min-mem", SettingKind.Bytes, "The least memory one build is given, whatever its history says (within max-mem).") { Preference = true };

    public static SettingDefinition MaxStorage { get; } = new("max-storage", SettingKind.Bytes, "Quota: the most NAR bytes the account's store may hold; an upload past it is refused.") { Quota = true };

    public static SettingDefinition MaxCpuHoursPerMonth { get; } = new("max-cpu-hours-per-month", SettingKind.Hours, "Quota: the CPU hours the account's builds may use in a calendar month (UTC); past it builds are refused before they start.") { Quota = true };

    public static SettingDefinition Retention { get; } = new("retention", SettingKind.Duration, "How long after its last use (upload; download, a build's input or output, asked for again, over SSH or the socket) a path nothing roots is kept by the server's collections; 0: only the server's --gc-keep-recent.") { Preference = true, AccountWide = true };

    public static SettingDefinition RetentionBuilds { get; } = new("retention-builds", SettingKind.Count, "How many of the account's latest successful builds keep their outputs in the server's collections, however long ago they were used.") { Preference = true, AccountWide = true };

    public static SettingDefinition KeepBuildsRunning { get; } = new("keep-builds-running", SettingKind.Switch, "Whether a build goes on when its client disconnects (its result is kept for the next request); off: it stops unless another request waits for it.");

    public static SettingDefinition ReuseBuildFailures { get; } = new("reuse-build-failures", SettingKind.Switch, "Whether a derivation whose latest build for the account failed, from the same inputs, fails again at once with that build's error.");

    public static SettingDefinition ReuseBuildTimeouts { get; } = new("reuse-build-timeouts", SettingKind.Switch, "Whether a derivation whose latest build for the account timed out, from the same inputs, fails again at once.");

    public static SettingDefinition SettingsFromSshEnv { get; } = new("settings-from-ssh-env", SettingKind.Switch, "Whether the SSH session's KILN_* variables (SetEnv) are read as settings (default on).") { Gate = true, Default = 1 };

    public static SettingDefinition SettingsFromDrvEnv { get; } = new("settings-from-drv-env", SettingKind.Switch, "Whether a derivation's own KILN_* attributes are read as settings for its build (default off: a derivation is not always the account's own).") { Gate = true };

    public static SettingDefinition PushTo { get; } = new("push-to", SettingKind.Text, "Binary caches the outputs of the account's successful builds (and their closures) are pushed to, signed with its key: file://, http(s):// (PUT), s3:// URLs; ?compression=xz|zstd|none.") { AccountWide = true, Canonical = Kiln.Store.Push.PushTarget.Canonical };

    public static SettingDefinition PushReused { get; } = new("push-reused", SettingKind.Switch, "Whether outputs Kiln reused (built before, for anyone) are pushed to push-to too, not only those built for the account now.") { AccountWide = true };

    public static SettingDefinition Substituters { get; } = new("substituters", SettingKind.Text, "Upstream binary caches (http(s):// URLs) Kiln substitutes from for the account, first preferred; none: the server's --substituters. The operator's to set.")
    {
        AccountWide = true,
        OperatorOnly = true,
        Upstream = true,
        EmptyText = "the server's",
        Canonical = CanonicalSubstituters,
    };

    public static SettingDefinition TrustedPublicKeys { get; } = new("trusted-public-keys", SettingKind.Text, "Keys (name:base64) whose signatures the account trusts on what its substituters serve, besides the server's. The operator's to set.")
    {
        AccountWide = true,
        OperatorOnly = true,
        Upstream = true,
        EmptyText = "the server's only",
        Canonical = CanonicalKeys,
    };

    public static SettingDefinition Tags { get; } = new("tags", SettingKind.Text, "Tags (name=value, space-separated) every build the account's (or the key's) sessions ask for gets, besides the session's own KILN_TAG_* (which win on the same name).") { Canonical = CanonicalTags };

    public static SettingDefinition TrustedAccounts { get; } = new(AccountSharing.TrustedAccounts, SettingKind.Text, "Accounts whose builds and uploads the account takes as from a trusted cache, first preferred: a path it lacks is taken (with its closure) from the first of their stores that has it, where that account shares with it (share-with).")
    {
        AccountWide = true,
        Canonical = AccountSharing.Canonical,
    };

    public static SettingDefinition ShareWith { get; } = new(AccountSharing.ShareWith, SettingKind.Text, "Accounts that may take paths from the account's store (what it uploaded, built, fetched or took), where they trust it (trusted-accounts).")
    {
        AccountWide = true,
        Canonical = AccountSharing.Canonical,
    };

    public static SettingDefinition SigningKeyForBuilds { get; } = new("signing-key-for-builds", SettingKind.Text, "The Nix secret key (name:base64, as nix-store --generate-binary-cache-key writes it) that signs what Kiln builds for the account from inputs it trusts, and its pushes; shown by its public half. Give it on standard input: settings set signing-key-for-builds - < key.sec.")
    {
        AccountWide = true,
        SigningKey = true,
        Secret = true,
        EmptyText = "none",
        Canonical = CanonicalSigningKey,
    };

    public static SettingDefinition Netrc { get; } = new("netrc", SettingKind.Text, "Credentials (netrc: machine HOST login USER password SECRET …) for the account's upstream caches and its push-to targets; kept sealed, shown by machine names only. Give it on standard input: settings set netrc - < netrc.")
    {
        AccountWide = true,
        Upstream = true,
        Secret = true,
        Canonical = CanonicalNetrc,
    };

    public static IReadOnlyList<SettingDefinition> All { get; } =
        [Timeout, MaxSilentTime, MaxBuildLogSize, MaxJobs, MaxCpu, MinCpu, DefaultCpu, MaxMem, MinMem, MaxStorage, MaxCpuHoursPerMonth, Retention, RetentionBuilds, KeepBuildsRunning, ReuseBuildFailures, ReuseBuildTimeouts,
            SettingsFromSshEnv, SettingsFromDrvEnv, Substituters, TrustedPublicKeys, PushTo, PushReused, Tags, TrustedAccounts, ShareWith, SigningKeyForBuilds, Netrc];

    private static string CanonicalSubstituters(string text) => string.Join(' ', text.Split([' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries).Distinct(StringComparer.Ordinal)
        .Select(url => Uri.TryCreate(url, UriKind.Absolute, out var uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps)
            ? url
            : throw new KilnException(ErrorKind.Invalid, $"'{(url.Length > 60 ? url[..60] + "…" : url)}' is not an http:// or https:// binary cache")));

    private static string CanonicalKeys(string text) => string.Join(' ', text.Split([' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries).Distinct(StringComparer.Ordinal)
        .Select(key =>
        {
            try
            {
                return Kiln.Nix.Signing.PublicKey.Parse(key).ToString();
            }
            catch (Kiln.Nix.NixFormatException e)
            {
                throw new KilnException(ErrorKind.Invalid, e.Message);
            }
        }));

    // A secret key as it is given (kept as the account's key, never shown), or the public half listings show.
    private static string CanonicalSigningKey(string text)
    {
        try
        {
            return Kiln.Nix.Signing.SecretKey.Parse(text.Trim()).ToString();
        }
        catch (Kiln.Nix.NixFormatException)
        {
            try
            {
                return Kiln.Nix.Signing.PublicKey.Parse(text.Trim()).ToString();
            }
            catch (Kiln.Nix.NixFormatException)
            {
                throw new KilnException(ErrorKind.Invalid, "not a Nix secret key (name:base64 of 64 bytes, as nix-store --generate-binary-cache-key writes it)");
            }
        }
    }

    // A netrc as it is kept: its words separated by single spaces (one entry after another, as netrc allows), with at
    // least one machine or default entry.
    private static string CanonicalNetrc(string text)
    {
        var words = text.Split([' ', '\t', '\n', '\r'], StringSplitOptions.RemoveEmptyEntries);
        var parsed = Kiln.Store.Upstream.Netrc.Parse(text);
        return words.Length == 0 ? "" : parsed.Machines.Count > 0 || parsed.HasDefault
            ? string.Join(' ', words)
            : throw new KilnException(ErrorKind.Invalid, "not netrc text: no 'machine HOST login USER password SECRET' (or 'default …') entry");
    }

    /// <summary>What listings show of a netrc: its machines (and default), without logins or passwords — itself netrc text.</summary>
    public static string NetrcShown(string netrc)
    {
        var parsed = Kiln.Store.Upstream.Netrc.Parse(netrc ?? "");
        return string.Join(' ', parsed.Machines.Order(StringComparer.Ordinal).Select(m => $"machine {m}").Concat(parsed.HasDefault ? ["default"] : []));
    }

    // Tags as the setting keeps them: each name=value checked, a name once (the last one given), at most BuildTag.MaxTags.
    private static string CanonicalTags(string text)
    {
        var tags = new List<BuildTag>();
        foreach (var word in text.Split([' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries))
        {
            try
            {
                var tag = BuildTag.Parse(word);
                tags.RemoveAll(t => t.Name == tag.Name);
                tags.Add(tag);
            }
            catch (FormatException e)
            {
                throw new KilnException(ErrorKind.Invalid, e.Message);
            }
        }

        return tags.Count <= BuildTag.MaxTags
            ? string.Join(' ', tags)
            : throw new KilnException(ErrorKind.Invalid, $"at most {BuildTag.MaxTags} tags");
    }

    /// <summary>The tags of a <see cref="Tags"/> value (canonical text).</summary>
    public static IReadOnlyList<BuildTag> TagsOf(string text) =>
        [.. (text ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(BuildTag.Parse)];

    /// <summary>Whether the setting by that name is a secret (<see cref="SettingDefinition.Secret"/>): given on standard input only.</summary>
    public static bool IsSecret(string name) => All.Any(d => d.Secret && d.Name == name);

    /// <summary>The most a value piped in for <c>settings set NAME -</c> may be: a key or a netrc, not a file of any size.</summary>
    public const int MaxPipedValue = 64 * 1024;

    /// <summary>The setting with that name.</summary>
    /// <exception cref="KilnException">There is none (Invalid), with the names there are.</exception>
    public static SettingDefinition Find(string name) =>
        All.FirstOrDefault(d => d.Name == name) ?? throw new KilnException(ErrorKind.Invalid, $"there is no setting '{name}' (there are: {string.Join(", ", All.Select(d => d.Name))})");

    /// <summary>The scope a key's settings are kept under.</summary>
    public static string KeyScope(string fingerprint) => "key:" + fingerprint;

    /// <summary>The scope a token's settings are kept under.</summary>
    public static string TokenScope(long id) => "token:" + id.ToString(CultureInfo.InvariantCulture);

    /// <summary>
    /// Every setting's value in effect for a session: <paramref name="server"/>'s (by name, 0 when absent), then the
    /// account's rows (scope empty), the <paramref name="scope"/>'s (a key or token; null: none), then
    /// <paramref name="environment"/>'s <c>KILN_*</c> variables where <c>settings-from-ssh-env</c> is on, then
    /// <paramref name="derivation"/>'s <c>KILN_*</c> attributes where <c>settings-from-drv-env</c> is on (malformed
    /// values are left out, as a client cannot be told at login). A quota is the server's or the account's only; a
    /// gate the server's, the account's or the key's.
    /// </summary>
    public static IReadOnlyList<EffectiveSetting> Resolve(IReadOnlyDictionary<string, long> server, IReadOnlyList<SettingRecord> stored, string? scope,
        IReadOnlyDictionary<string, string>? environment, IReadOnlyDictionary<string, string>? derivation = null)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(stored);
        var result = new List<EffectiveSetting>();
        foreach (var definition in All.OrderBy(d => !d.Gate)) // the gates first: they decide what the others read
        {
            if (definition.Kind == SettingKind.Text)
            {
                result.Add(ResolveText(definition, stored, scope));
                continue;
            }

            var effective = new EffectiveSetting(definition, server.GetValueOrDefault(definition.Name, definition.Default), SettingLevel.Server, Final: false);
            foreach (var row in stored.Where(r => r.Name == definition.Name && r.Scope.Length == 0))
            {
                effective = Apply(effective, Stored(definition, row.Value), SettingLevel.Account, row.Final);
            }

            if (!definition.AccountWide)
            {
                foreach (var row in stored.Where(r => r.Name == definition.Name && scope is not null && r.Scope == scope))
                {
                    effective = Apply(effective, Stored(definition, row.Value), SettingLevel.Key, row.Final);
                }
            }

            if (!definition.AccountWide && !definition.Gate)
            {
                if (environment is not null && On(result, SettingsFromSshEnv) && environment.TryGetValue(definition.EnvironmentVariable, out var text))
                {
                    effective = Apply(effective, Parsed(definition, text), SettingLevel.Session, final: false);
                }

                if (derivation is not null && On(result, SettingsFromDrvEnv) && derivation.TryGetValue(definition.EnvironmentVariable, out var attribute))
                {
                    effective = Apply(effective, Parsed(definition, attribute), SettingLevel.Derivation, final: false);
                }
            }

            result.Add(effective);
        }

        return [.. All.Select(d => result.First(e => e.Definition == d))]; // (in the registry's order again)
    }

    // A text setting: the account's value, then the key's (where it is not account-wide), unless the account's is final;
    // a value that is no longer valid (a row edited by hand) is left out.
    private static EffectiveSetting ResolveText(SettingDefinition definition, IReadOnlyList<SettingRecord> stored, string? scope)
    {
        var effective = new EffectiveSetting(definition, 0, SettingLevel.Server, Final: false);
        foreach (var (level, rows) in new[]
        {
            (SettingLevel.Account, stored.Where(r => r.Name == definition.Name && r.Scope.Length == 0)),
            (SettingLevel.Key, stored.Where(r => r.Name == definition.Name && !definition.AccountWide && scope is not null && r.Scope == scope)),
        })
        {
            foreach (var row in rows)
            {
                if (!effective.Final && TryNormalize(definition, row.Value) is { } text)
                {
                    effective = new EffectiveSetting(definition, 0, level, row.Final) { Text = text };
                }
            }
        }

        return effective;
    }

    private static string? TryNormalize(SettingDefinition definition, string text)
    {
        try
        {
            return definition.Normalize(text);
        }
        catch (KilnException)
        {
            return null;
        }
    }

    /// <summary>The text of a text setting among <see cref="Resolve"/>'s.</summary>
    public static string TextOf(IEnumerable<EffectiveSetting> effective, SettingDefinition definition) => effective.First(e => e.Definition == definition).Text;

    private static bool On(List<EffectiveSetting> resolved, SettingDefinition gate) => resolved.First(e => e.Definition == gate).Value != 0;

    /// <summary>The values of <see cref="Resolve"/>'s settings by name.</summary>
    public static IReadOnlyDictionary<string, long> ByName(IEnumerable<EffectiveSetting> effective) =>
        effective.ToDictionary(s => s.Definition.Name, s => s.Value, StringComparer.Ordinal);

    // A lower level's value, where it may change the one in effect: not past a final, and for a limit only tighter (a
    // preference's value other than 0, and a switch's either value, replace the one above).
    private static EffectiveSetting Apply(EffectiveSetting current, long? value, SettingLevel level, bool final)
    {
        if (value is not { } v || current.Final || !(current.Definition.Kind == SettingKind.Switch || (current.Definition.Preference ? v != 0 : Tighter(v, current.Value))))
        {
            return final && value is not null && !current.Final ? current with { Final = true } : current;
        }

        return new EffectiveSetting(current.Definition, v, level, final);
    }

    // For a limit, 0 is none: any other value is tighter than none, and smaller is tighter.
    private static bool Tighter(long value, long current) => value != 0 && (current == 0 || value < current);

    // A stored value is kept canonical (seconds, bytes, a number: AccountService writes it so); one written by hand in
    // another form is read as people write it.
    private static long? Stored(SettingDefinition definition, string text) =>
        long.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value)
            ? value <= definition.Most ? value : null // (a row edited by hand past the range is left out, as a malformed one)
            : Parsed(definition, text);

    private static long? Parsed(SettingDefinition definition, string text)
    {
        try
        {
            return definition.Parse(text);
        }
        catch (KilnException)
        {
            return null;
        }
    }
}
