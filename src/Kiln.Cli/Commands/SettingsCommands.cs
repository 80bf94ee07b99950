using System.CommandLine;
using Kiln.Accounts;
using static Kiln.Cli.Commands.AccountCommands;

namespace Kiln.Cli.Commands;

/// <summary>
/// <c>kiln settings show|set|unset</c>: the settings hierarchy's account and key levels (the server's are kiln serve's
/// options; a session's come from its SSH environment, KILN_*).
/// </summary>
internal static class SettingsCommands
{
    public static Command Settings()
    {
        var showData = DataOption();
        var showJson = JsonOption();
        var showAccount = new Argument<string>("ACCOUNT");
        var showKey = new Option<string?>("--key") { Description = "What a session with this key (its fingerprint) gets, its own settings included." };
        var show = new Command("show", "Every setting's value from the account's and the key's levels and which one it comes from. The server's level (kiln serve's " +
            "--timeout, --max-silent-time, --max-build-log-size) is not known here: a value shown holds only where it is tighter than that ('ssh kiln settings' shows all).")
        {
            showAccount, showKey, showData, showJson,
        };
        show.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(showData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var service = Service(metadata);
                var account = await service.AccountAsync(Actor.Operator, result.GetValue(showAccount)!, cancellationToken).ConfigureAwait(false);
                var stored = await service.StoredSettingsAsync(Actor.Operator, account, cancellationToken).ConfigureAwait(false);
                var key = result.GetValue(showKey);
                if (key is not null && (await service.ListKeysAsync(Actor.Operator, account, cancellationToken).ConfigureAwait(false)).All(k => k.Fingerprint != key))
                {
                    throw new CommandException($"the account has no key {key} (see 'kiln key list {account.Name}')");
                }

                var effective = Kiln.Accounts.Settings.Resolve(new Dictionary<string, long>(), stored, key is null ? null : Kiln.Accounts.Settings.KeyScope(key), null);
                Print(result.GetValue(showJson),
                    effective.Select(e => new { name = e.Definition.Name, value = e.JsonValue, origin = e.Origin.ToString().ToLowerInvariant(), final = e.Final, description = e.Definition.Description }),
                    string.Join("\n", effective.Select(e => e.ToLine(server: "not set (the server's holds)"))));
                return 0;
            }
        });

        var setData = DataOption();
        var setAccount = new Argument<string>("ACCOUNT");
        var setName = new Argument<string>("NAME") { Description = $"One of: {string.Join(", ", Kiln.Accounts.Settings.All.Select(d => d.Name))}." };
        var setValue = new Argument<string>("VALUE") { Description = "Seconds (or 15m, 2h) or bytes (or 64MiB); 0: none of this level's; -: read from standard input (signing-key-for-builds, netrc)." };
        var setKey = new Option<string?>("--key") { Description = "For this key of the account (its fingerprint) rather than the whole account." };
        var final = new Option<bool>("--final") { Description = "Lower levels (keys, sessions) may not change it." };
        var set = new Command("set", "Set a setting for an account or one of its keys (limits only tighten what levels above set).") { setAccount, setName, setValue, setKey, final, setData };
        set.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(setData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var service = Service(metadata);
                var account = await service.AccountAsync(Actor.Operator, result.GetValue(setAccount)!, cancellationToken).ConfigureAwait(false);
                // "-": the value from standard input (a secret, which a command line would show to ps and keep in history).
                var name = result.GetValue(setName)!;
                var given = result.GetValue(setValue)!;
                if (given != "-" && Kiln.Accounts.Settings.IsSecret(name))
                {
                    throw new CommandException($"{name} is a secret: give it on standard input, not on the command line: kiln settings set {result.GetValue(setAccount)} {name} - < FILE");
                }

                var value = given == "-" ? await ReadInputAsync(cancellationToken).ConfigureAwait(false) : given;
                var record = await service.SetSettingAsync(Actor.Operator, account, name, value, result.GetValue(setKey),
                    result.GetValue(final), cancellationToken).ConfigureAwait(false);
                Console.Out.Write($"{account.Name}{(record.Scope.Length > 0 ? " " + record.Scope : "")}: {record.Name} = {record.Value}{(record.Final ? " (final)" : "")}\n");
                return 0;
            }
        });

        var unsetData = DataOption();
        var unsetAccount = new Argument<string>("ACCOUNT");
        var unsetName = new Argument<string>("NAME");
        var unsetKey = new Option<string?>("--key") { Description = "The key's setting rather than the account's." };
        var unset = new Command("unset", "Remove an account's (or key's) setting: the level above decides again.") { unsetAccount, unsetName, unsetKey, unsetData };
        unset.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(unsetData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var service = Service(metadata);
                var account = await service.AccountAsync(Actor.Operator, result.GetValue(unsetAccount)!, cancellationToken).ConfigureAwait(false);
                var name = result.GetValue(unsetName)!;
                if (!await service.UnsetSettingAsync(Actor.Operator, account, name, result.GetValue(unsetKey), cancellationToken).ConfigureAwait(false))
                {
                    throw new CommandException($"{name} is not set there");
                }

                Console.Out.Write($"{account.Name}: {name} unset\n");
                return 0;
            }
        });

        return new Command("settings", "The settings hierarchy: server (kiln serve's options) → account → key → session (SSH SetEnv KILN_*).") { show, set, unset };
    }

    // A value piped in (at most Settings.MaxPipedValue).
    private static async Task<string> ReadInputAsync(CancellationToken cancellationToken)
    {
        var buffer = new char[Kiln.Accounts.Settings.MaxPipedValue];
        var length = 0;
        int read;
        while ((read = await Console.In.ReadAsync(buffer.AsMemory(length), cancellationToken).ConfigureAwait(false)) > 0)
        {
            length += read;
            if (length == buffer.Length)
            {
                throw new CommandException($"the value on standard input is longer than {buffer.Length / 1024} KiB");
            }
        }

        return new string(buffer, 0, length).Trim();
    }
}
