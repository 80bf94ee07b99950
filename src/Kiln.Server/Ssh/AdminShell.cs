using System.Buffers.Binary;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Kiln.Accounts;
using Kiln.Api;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Server.Ssh;

/// <summary>
/// The account's shell over SSH: <c>ssh kiln@host</c> (or <c>… shell</c>) for a prompt on stdin/stdout (no PTY
/// needed, <c>ssh -t</c> works too), and <c>ssh kiln@host kiln COMMAND [--json]</c> for one command. An error is a
/// line on stderr and never ends an interactive session; a one-shot command's exit status says whether it worked.
/// What it shows is the key's own account only, within the key's permissions.
/// </summary>
internal sealed class AdminShell(AccountService accounts, SshKeyRecord key, StoreView view, Stream connection, IReadOnlyDictionary<string, long> serverSettings,
    Func<long, CancellationToken, Task<string>>? pushKey = null)
{
    private readonly Actor _actor = Actor.ForKey(key);

    private const string Help = """
        Kiln shell commands (add --json for JSON):
          whoami                          the account and key you are logged in with
          keys list                       the account's SSH keys
          keys add 'KEY' [--permissions P] [--proof SIG]
                                          let another key log in (P: store:read,store:write,build:read,build:write,
                                          account:write); SIG proves you hold it (the command says how to make it)
          keys remove FINGERPRINT         stop a key logging in
          builds list [--limit N] [--tag NAME=VALUE]
                                          recent builds run for the account (tags: KILN_TAG_<NAME>=value)
          builds show ID                  one build
          builds log ID                   its log
          pushes                          recent pushes of builds' outputs to the account's push-to caches
          push-key                        the key Kiln logs in with to the account's ssh-ng:// push-to targets
                                          (add it to their authorized_keys)
          ci summary --tag NAME=VALUE     what a tagged CI run's builds came to, as Markdown
          usage [--since DATE] [--until DATE] [--by day|month]
                                          builds started, CPU and wall hours, and storage per day or month
          settings [--key FINGERPRINT]    the settings in effect for this key's (or that key's) sessions, and where
                                          each comes from
          settings set NAME VALUE [--this-key] [--final]
                                          set one for the account (or this key): any 'settings' lists but the
                                          operator's (quotas, substituters); limits only tighten the server's
          settings unset NAME [--this-key]
          pin list                        the account's pins
          pin add PATH [--name NAME]      keep PATH (and its closure) whatever garbage collection would do
          pin remove NAME                 stop keeping a pinned path
          help, exit
        """;

    private static readonly JsonSerializerOptions Json = new()
    {
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase, // the API's documents, as the API shows them
    };

    // The interactive shell's reader of the connection (a value given as "-" is its next line), null for one command.
    private StreamReader? _input;

    /// <summary>Answers lines from the connection with a prompt until <c>exit</c> or end of input.</summary>
    public async Task RunInteractiveAsync(CancellationToken cancellationToken)
    {
        using var input = new StreamReader(connection, Encoding.UTF8, false, 4096, leaveOpen: true);
        _input = input;
        await OutAsync($"Kiln: logged in to account {key.AccountName}. Type 'help' for commands.\n", cancellationToken).ConfigureAwait(false);
        while (true)
        {
            await OutAsync("kiln> ", cancellationToken).ConfigureAwait(false);
            var line = await input.ReadLineAsync(cancellationToken).ConfigureAwait(false);
            if (line is null || line.Trim() is "exit" or "quit" or "logout")
            {
                break;
            }

            if (line.Trim().Length > 0)
            {
                await RunAsync(line, cancellationToken).ConfigureAwait(false);
            }
        }

        await ExitAsync(0, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Runs one command (the words after <c>kiln</c>) and ends with its exit status.</summary>
    public async Task RunOnceAsync(string commandLine, CancellationToken cancellationToken)
    {
        var ok = await RunAsync(commandLine, cancellationToken).ConfigureAwait(false);
        await ExitAsync(ok ? 0 : 1, cancellationToken).ConfigureAwait(false);
    }

    private async Task<bool> RunAsync(string line, CancellationToken cancellationToken)
    {
        try
        {
            var words = Tokenize(line);
            var json = words.Remove("--json");
            var text = await ExecuteAsync(words, json, cancellationToken).ConfigureAwait(false);
            await OutAsync(text.EndsWith('\n') || text.Length == 0 ? text : text + "\n", cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (Exception e) when (e is ShellException or KilnException or ArgumentException or FormatException or OverflowException)
        {
            await ErrAsync($"error: {e.Message}\n", cancellationToken).ConfigureAwait(false);
            return false;
        }
    }

    private async Task<string> ExecuteAsync(List<string> words, bool json, CancellationToken cancellationToken)
    {
        var command = string.Join(' ', words.TakeWhile(w => !w.StartsWith('-')).Take(2));
        switch (words.ElementAtOrDefault(0))
        {
            case "help":
                return Help;
            case "whoami":
                return Show(json, new { account = key.AccountName, key = key.Fingerprint, permissions = KeyPermissionNames.ToNames(key.Permissions) },
                    $"account {key.AccountName}\nkey {key.Fingerprint} ({KeyPermissionNames.Format(key.Permissions)})");
            case "keys":
                return await KeysAsync(words, json, cancellationToken).ConfigureAwait(false);
            case "builds":
                Need(KeyPermissions.BuildRead);
                return await BuildsAsync(words, json, cancellationToken).ConfigureAwait(false);
            case "push-key" when pushKey is not null:
                Need(KeyPermissions.BuildRead);
                var line = await pushKey(key.AccountId, cancellationToken).ConfigureAwait(false);
                return Show(json, new { publicKey = line }, line);
            case "pushes":
                Need(KeyPermissions.BuildRead);
                var recent = (await view.PushesAsync(0, 50, cancellationToken).ConfigureAwait(false)).Select(PushDocument.Of).ToList();
                return Show(json, recent, recent.Count == 0 ? "no pushes yet (see the push-to setting)"
                    : string.Join("\n", recent.Select(p => $"build {p.Build}: {p.ToLine()}")));
            case "ci" when words.ElementAtOrDefault(1) == "summary":
                Need(KeyPermissions.BuildRead);
                var summary = await Summaries.SummarizeAsync(view, new BuildQuery { Tag = Option(words, "--tag") is { } tagged ? BuildTag.Parse(tagged) : null },
                    _ => Task.FromResult<string?>(null), cancellationToken).ConfigureAwait(false);
                return json ? JsonSerializer.Serialize(summary, Json) : Summaries.Markdown(summary).TrimEnd('\n');
            case "usage":
                Need(KeyPermissions.BuildRead);
                var usage = await UsageReports.ReportAsync(view, BuildFilters.Parse(null, null, Option(words, "--since"), Option(words, "--until")),
                    UsageReports.ByMonth(Option(words, "--by")), cancellationToken).ConfigureAwait(false);
                return json ? JsonSerializer.Serialize(usage, Json) : UsageReports.Text(usage);
            case "pin":
                return await PinAsync(words, json, cancellationToken).ConfigureAwait(false);
            case "settings":
                return await SettingsAsync(words, json, cancellationToken).ConfigureAwait(false);
            default:
                throw new ShellException($"unknown command '{command}' (try 'help')");
        }
    }

    private async Task<string> PinAsync(List<string> words, bool json, CancellationToken cancellationToken)
    {
        switch (words.ElementAtOrDefault(1))
        {
            case "list":
                Need(KeyPermissions.StoreRead);
                var pins = await view.PinsAsync(cancellationToken).ConfigureAwait(false);
                return Show(json, pins.Select(PinDocument.Of), string.Join("\n", pins.Select(p => $"{p.Name}\t{p.Path}")));
            case "add":
                Need(KeyPermissions.StoreWrite);
                var text = words.ElementAtOrDefault(2) is { } given && !given.StartsWith("--", StringComparison.Ordinal) ? given : throw new ShellException("usage: pin add PATH [--name NAME]");
                var path = StorePath.TryParse(text, out var parsed) ? parsed : throw new ShellException($"'{text}' is not a store path (/nix/store/HASH-NAME)");
                var pin = await view.PinAsync(path, Option(words, "--name"), cancellationToken).ConfigureAwait(false);
                return Show(json, PinDocument.Of(pin), $"pinned {pin.Path} as '{pin.Name}'");
            case "remove":
                Need(KeyPermissions.StoreWrite);
                var removed = await view.UnpinAsync(words.ElementAtOrDefault(2) ?? throw new ShellException("usage: pin remove NAME"), cancellationToken).ConfigureAwait(false);
                return Show(json, PinDocument.Of(removed), $"removed pin '{removed.Name}' ({removed.Path})");
            default:
                throw new ShellException("usage: pin list | pin add PATH [--name NAME] | pin remove NAME");
        }
    }

    // The settings hierarchy's account and key levels: shown with what this key's sessions get (the server's level
    // included); set and unset with account:write (AccountService's rule).
    private async Task<string> SettingsAsync(List<string> words, bool json, CancellationToken cancellationToken)
    {
        var account = AccountService.OwnAccount(_actor);
        var forKey = Option(words, "--key") ?? (words.Contains("--this-key") ? key.Fingerprint : null);
        var final = words.Contains("--final");
        // The words that are not flags (nor --key's value), wherever the flags were put.
        words = words.Where((w, i) => !w.StartsWith("--", StringComparison.Ordinal) && (i == 0 || words[i - 1] != "--key")).ToList();
        switch (words.ElementAtOrDefault(1))
        {
            case null or "show":
                var stored = await accounts.StoredSettingsAsync(_actor, account, cancellationToken).ConfigureAwait(false);
                var effective = Kiln.Accounts.Settings.Resolve(serverSettings, stored, Kiln.Accounts.Settings.KeyScope(forKey ?? key.Fingerprint), null);
                return Show(json, effective.Select(e => new { name = e.Definition.Name, value = e.JsonValue, origin = e.Origin.ToString().ToLowerInvariant(), final = e.Final }),
                    string.Join("\n", effective.Select(e => e.ToLine())));
            case "set" when words.Count >= 4:
                // A secret is given on standard input ("-"), never on the command line, which is logged and seen by ps.
                if (words[3] == "-" && _input is not null)
                {
                    // (A pasted netrc's further lines would be read as commands and echoed back in errors.)
                    throw new ShellException($"pipe the value in: ssh … kiln settings set {words[2]} - < FILE");
                }

                if (words[3] != "-" && Kiln.Accounts.Settings.IsSecret(words[2]))
                {
                    throw new ShellException($"{words[2]} is a secret: give it on standard input, not on the command line (which is logged): settings set {words[2]} - < FILE");
                }

                var value = words[3] == "-" ? await ReadValueAsync(cancellationToken).ConfigureAwait(false) : words[3];
                var record = await accounts.SetSettingAsync(_actor, account, words[2], value, forKey, final, cancellationToken).ConfigureAwait(false);
                return $"{record.Name} = {record.Value}{(record.Scope.Length > 0 ? " for " + record.Scope : "")}{(record.Final ? " (final)" : "")}";
            case "unset" when words.Count >= 3:
                return await accounts.UnsetSettingAsync(_actor, account, words[2], forKey, cancellationToken).ConfigureAwait(false)
                    ? $"{words[2]} unset"
                    : throw new ShellException($"{words[2]} is not set there");
            default:
                throw new ShellException("usage: settings | settings set NAME VALUE [--this-key | --key FINGERPRINT] [--final] | settings unset NAME [--this-key | --key FINGERPRINT]");
        }
    }

    // A value given as "-": all a single command was piped (at most Settings.MaxPipedValue).
    private async Task<string> ReadValueAsync(CancellationToken cancellationToken)
    {
        var buffer = new byte[Kiln.Accounts.Settings.MaxPipedValue];
        var length = 0;
        while (true)
        {
            var read = await connection.ReadAsync(buffer.AsMemory(length), cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                break;
            }

            length += read;
            if (length == buffer.Length)
            {
                throw new ShellException($"the value on standard input is longer than {buffer.Length / 1024} KiB");
            }
        }

        return Encoding.UTF8.GetString(buffer, 0, length).Trim() is { Length: > 0 } text ? text : throw new ShellException("no value on standard input");
    }

    private async Task<string> KeysAsync(List<string> words, bool json, CancellationToken cancellationToken)
    {
        var account = AccountService.OwnAccount(_actor);
        switch (words.ElementAtOrDefault(1))
        {
            case "list":
                var keys = await accounts.ListKeysAsync(_actor, account, cancellationToken).ConfigureAwait(false);
                return Show(json, keys.Select(KeyDocument.Of), string.Join("\n", keys.Select(k =>
                    $"{k.Fingerprint} {k.Key.Type} {KeyPermissionNames.Format(k.Permissions)}{(k.Key.Comment.Length > 0 ? " " + k.Key.Comment : "")}{(k.Id == key.Id ? " (this key)" : "")}")));
            case "add":
                var granted = Option(words, "--permissions") is { } names ? KeyPermissionNames.Parse(names) : KeyPermissions.All;
                var text = words.ElementAtOrDefault(2) is { } given && !given.StartsWith("--", StringComparison.Ordinal)
                    ? given
                    : throw new ShellException("usage: keys add 'ssh-ed25519 AAAA… comment' [--permissions …] [--proof SIG]");
                var newKey = SshPublicKey.Parse(text);
                var result = await accounts.AddKeyAsync(_actor, account, newKey, granted, Option(words, "--proof"), cancellationToken).ConfigureAwait(false);
                if (result.Added is not { } added)
                {
                    // Proof of possession: so nobody can register someone else's public key and take over their logins.
                    throw new ShellException($"""
                        prove that you hold this key first: sign this message with it,
                          printf '%s\n' '{result.ProofMessage!.TrimEnd('\n')}' | ssh-keygen -Y sign -n {SshKeygenProofs.Namespace} -f PRIVATE_KEY_FILE > proof.sig
                        then add it again with the signature:
                          keys add '{newKey}' --permissions {KeyPermissionNames.Format(granted)} --proof "$(cat proof.sig)"
                        (in this shell, paste the signature's lines joined: --proof 'U1NIU0lH…')
                        """);
                }

                return Show(json, KeyDocument.Of(added), $"added {added.Fingerprint} ({KeyPermissionNames.Format(added.Permissions)})");
            case "remove":
                var fingerprint = words.ElementAtOrDefault(2) ?? throw new ShellException("usage: keys remove FINGERPRINT");
                await accounts.RemoveKeyAsync(_actor, account, fingerprint, cancellationToken).ConfigureAwait(false);
                return Show(json, new { removed = fingerprint }, $"removed {fingerprint}");
            default:
                throw new ShellException("usage: keys list | keys add 'KEY' [--permissions …] [--proof SIG] | keys remove FINGERPRINT");
        }
    }

    // The word after an option, if the option is there.
    private static string? Option(List<string> words, string name)
    {
        var at = words.IndexOf(name);
        return at < 0 ? null : words.ElementAtOrDefault(at + 1) ?? throw new ShellException($"{name} needs a value");
    }

    private async Task<string> BuildsAsync(List<string> words, bool json, CancellationToken cancellationToken)
    {
        switch (words.ElementAtOrDefault(1))
        {
            case "list":
                var limitAt = words.IndexOf("--limit");
                var limit = limitAt > 0 ? int.Parse(words.ElementAtOrDefault(limitAt + 1) ?? "", NumberStyles.None, CultureInfo.InvariantCulture) : 20;
                var builds = await view.ListBuildsAsync(new BuildQuery
                {
                    Limit = Math.Clamp(limit, 1, 10_000),
                    Tag = Option(words, "--tag") is { } tag ? BuildTag.Parse(tag) : null,
                }, cancellationToken).ConfigureAwait(false);
                return Show(json, builds.Select(b => BuildDocument.Of(b, key.AccountId)), builds.Count == 0 ? "no builds yet" : string.Join("\n", builds.Select(b =>
                    $"{b.Id,8}  {Status(b)}  {BuildDocument.Time(b.Started)}  {(b.Running ? 0 : b.RunSeconds),5}s  {b.DrvPath}")));
            case "show" or "log":
                var id = long.Parse(words.ElementAtOrDefault(2) ?? throw new ShellException($"usage: builds {words[1]} ID"), NumberStyles.None, CultureInfo.InvariantCulture);
                var build = await view.GetBuildAsync(id, cancellationToken).ConfigureAwait(false)
                    ?? throw new ShellException($"the account has no build {id}");
                if (words[1] == "show")
                {
                    var pushes = (await view.PushesAsync(build.Id, 50, cancellationToken).ConfigureAwait(false)).Select(PushDocument.Of).ToList();
                    return Show(json, BuildDocument.Of(build, key.AccountId) with { Pushes = pushes }, string.Join("\n",
                        $"build {build.Id}: {Status(build).Trim()}",
                        $"derivation /nix/store/{build.DrvPath}",
                        $"started {BuildDocument.Time(build.Started)}{(build.RanFrom is { } ran && ran > build.Started ? $" (waited {ran - build.Started} s in line)" : "")}, took {(build.Running ? 0 : build.RunSeconds)} s",
                        $"cpu {(build.CpuUserMicroseconds ?? 0) / 1e6:F2} s user, {(build.CpuSystemMicroseconds ?? 0) / 1e6:F2} s system; peak memory {build.PeakMemory ?? 0} bytes",
                        build.Error.Length > 0 ? $"error: {build.Error}" : "",
                        string.Join("\n", pushes.Select(p => p.ToLine()))).TrimEnd('\n'));
                }

                var log = await view.OpenBuildLogAsync(build.Id, cancellationToken).ConfigureAwait(false);
                if (log is null)
                {
                    return "";
                }

                await using (log.ConfigureAwait(false))
                {
                    using var text = new StreamReader(log, Encoding.UTF8);
                    return await text.ReadToEndAsync(cancellationToken).ConfigureAwait(false);
                }
            default:
                throw new ShellException("usage: builds list [--limit N] [--tag NAME=VALUE] | builds show ID | builds log ID");
        }
    }

    private void Need(KeyPermissions permission)
    {
        if (!key.Permissions.HasFlag(permission))
        {
            throw new ShellException($"this key lacks the {KeyPermissionNames.Format(permission)} permission");
        }
    }

    private static string Status(BuildRecord b) => b.Running ? "running" : b.Succeeded ? "built  " : "failed ";


    private static string Show(bool json, object value, string text) => json ? JsonSerializer.Serialize(value, Json) : text;

    /// <summary>
    /// A shell command as the front door logs it: a setting's value never (the shell takes secrets on standard input
    /// only, but one given on the command line must not reach the log either), read with the shell's own tokenizer so
    /// no quoting hides the word.
    /// </summary>
    internal static string Logged(string command)
    {
        ArgumentNullException.ThrowIfNull(command);
        if (!command.StartsWith("kiln ", StringComparison.Ordinal))
        {
            return command;
        }

        var words = Tokenize(command["kiln ".Length..]);
        var settings = words.IndexOf("settings");
        return settings >= 0 && words.IndexOf("set") > settings
            ? $"kiln settings set {words.Skip(words.IndexOf("set") + 1).FirstOrDefault(w => Kiln.Accounts.Settings.All.Any(d => d.Name == w)) ?? "…"} (value not logged)"
            : command;
    }

    // Words as a shell splits them: spaces separate, single and double quotes group.
    internal static List<string> Tokenize(string line)
    {
        var words = new List<string>();
        var word = new StringBuilder();
        var inWord = false;
        char? quote = null;
        foreach (var c in line)
        {
            if (quote is { } q)
            {
                if (c == q)
                {
                    quote = null;
                }
                else
                {
                    word.Append(c);
                }
            }
            else if (c is '\'' or '"')
            {
                quote = c;
                inWord = true;
            }
            else if (char.IsWhiteSpace(c))
            {
                if (inWord)
                {
                    words.Add(word.ToString());
                    word.Clear();
                    inWord = false;
                }
            }
            else
            {
                word.Append(c);
                inWord = true;
            }
        }

        if (quote is not null)
        {
            throw new ShellException("unterminated quote");
        }

        if (inWord)
        {
            words.Add(word.ToString());
        }

        return words;
    }

    private Task OutAsync(string text, CancellationToken cancellationToken) => FrameAsync('o', Encoding.UTF8.GetBytes(text), cancellationToken);

    private Task ErrAsync(string text, CancellationToken cancellationToken) => FrameAsync('e', Encoding.UTF8.GetBytes(text), cancellationToken);

    private Task ExitAsync(int status, CancellationToken cancellationToken)
    {
        var data = new byte[4];
        BinaryPrimitives.WriteInt32BigEndian(data, status);
        return FrameAsync('x', data, cancellationToken);
    }

    // See kiln-bridge: channel byte, big-endian length, bytes.
    private async Task FrameAsync(char channel, byte[] data, CancellationToken cancellationToken)
    {
        var header = new byte[5];
        header[0] = (byte)channel;
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(1), data.Length);
        await connection.WriteAsync(header, cancellationToken).ConfigureAwait(false);
        await connection.WriteAsync(data, cancellationToken).ConfigureAwait(false);
        await connection.FlushAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A mistake in a shell command, reported as is.</summary>
    private sealed class ShellException(string message) : Exception(message);
}
