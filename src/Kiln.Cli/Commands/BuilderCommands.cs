using System.CommandLine;
using System.Globalization;
using System.Text;
using Kiln.Farm.StockNix;
using Kiln.Store.Metadata;

namespace Kiln.Cli.Commands;

/// <summary>
/// <c>kiln builder add|list|remove</c>: stock Nix machines (any machine with a Nix daemon reachable over SSH) as
/// builders of this server. A running server takes changes up within seconds.
/// </summary>
internal static class BuilderCommands
{
    public static Command Builder()
    {
        var name = new Argument<string>("NAME") { Description = "A name for the builder (letters, digits, '.', '-', '_')." };
        var uri = new Argument<string>("URI") { Description = "Where it is: ssh-ng://[user@]host[:port]. The user must be trusted by its daemon (trusted-users)." };
        var systems = new Option<string[]>("--system") { Description = "A system it builds for (repeatable; default x86_64-linux).", AllowMultipleArgumentsPerToken = false };
        var features = new Option<string>("--features") { Description = "The system features it offers, comma-separated.", DefaultValueFactory = _ => "" };
        var maxJobs = new Option<int>("--max-jobs") { Description = "Builds Kiln runs there at once.", DefaultValueFactory = _ => 1 };
        var sshKey = new Option<string>("--ssh-key") { Description = "The private key Kiln logs in with (copied into Kiln's database).", Required = true };
        var hostKey = new Option<string?>("--host-key")
        {
            Description = "Its SSH host key, as 'ssh-ed25519 AAAA…' or base64-encoded as in Nix's machines files (default: the first one seen is kept).",
        };
        var addData = AccountCommands.DataOption();
        var add = new Command("add", "Add a stock Nix machine as a builder: steps for its systems and features go there (when no agent can take them).")
        {
            name, uri, systems, features, maxJobs, sshKey, hostKey, addData,
        };
        add.SetAction(async (result, cancellationToken) =>
        {
            var builderName = result.GetValue(name)!;
            if (!StockBuilders.IsValidName(builderName))
            {
                throw new CommandException("a builder's name is 1 to 64 letters, digits, '.', '-' or '_'");
            }

            if (!BuilderAddress.TryParse(result.GetValue(uri)!, out var address, out var error))
            {
                throw new CommandException(error);
            }

            if (result.GetValue(maxJobs) < 1)
            {
                throw new CommandException("--max-jobs is at least 1");
            }

            var key = ReadKey(result.GetValue(sshKey)!);
            var words = (result.GetValue(systems) ?? []).Concat(result.GetValue(features)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
            if (words.FirstOrDefault(w => w.Length == 0 || w.Any(char.IsWhiteSpace)) is { } bad)
            {
                throw new CommandException($"'{bad}' is not a system or feature name (no spaces)");
            }

            var record = new BuilderRecord
            {
                Name = builderName,
                Uri = address.ToString(),
                Systems = result.GetValue(systems) is { Length: > 0 } given ? given : ["x86_64-linux"],
                Features = [.. result.GetValue(features)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Distinct(StringComparer.Ordinal)],
                MaxJobs = result.GetValue(maxJobs),
                SshKey = key,
                HostKey = result.GetValue(hostKey) is { } host ? HostKey(host) : "",
                Created = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
            };
            var metadata = await AccountCommands.OpenAsync(result.GetValue(addData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                if (!await metadata.AddBuilderAsync(record, cancellationToken).ConfigureAwait(false))
                {
                    throw new CommandException($"a builder named '{builderName}' exists already (remove it first to change it)");
                }

                Console.Out.Write($"added builder {builderName}: {record.Uri}, {string.Join(' ', record.Systems)}, {record.MaxJobs} at a time\n");
                return 0;
            }
        });

        var removeName = new Argument<string>("NAME") { Description = "The builder's name." };
        var removeData = AccountCommands.DataOption();
        var remove = new Command("remove", "Remove a builder: no more builds go there (those running are retried elsewhere).") { removeName, removeData };
        remove.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await AccountCommands.OpenAsync(result.GetValue(removeData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                if (!await metadata.RemoveBuilderAsync(result.GetValue(removeName)!, cancellationToken).ConfigureAwait(false))
                {
                    throw new CommandException($"there is no builder named '{result.GetValue(removeName)}'");
                }

                Console.Out.Write($"removed builder {result.GetValue(removeName)}\n");
                return 0;
            }
        });

        var listData = AccountCommands.DataOption();
        var listJson = AccountCommands.JsonOption();
        var list = new Command("list", "List the builders (never their keys).") { listData, listJson };
        list.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await AccountCommands.OpenAsync(result.GetValue(listData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var builders = await metadata.ListBuildersAsync(cancellationToken).ConfigureAwait(false);
                AccountCommands.Print(result.GetValue(listJson), builders.Select(b => new
                {
                    name = b.Name,
                    uri = b.Uri,
                    systems = b.Systems,
                    features = b.Features,
                    maxJobs = b.MaxJobs,
                    hostKey = b.HostKey.Length > 0 ? b.HostKey : null,
                    created = DateTimeOffset.FromUnixTimeSeconds(b.Created).ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture),
                }), string.Join("\n", builders.Select(b =>
                    $"{b.Name}: {b.Uri} {string.Join(' ', b.Systems)} [{string.Join(',', b.Features)}], {b.MaxJobs} at a time, " +
                    $"host key {(b.HostKey.Length > 0 ? b.HostKey.Split(' ')[0] : "learnt on first contact")}")));
                return 0;
            }
        });

        return new Command("builder", "Stock Nix machines this server builds on (over SSH, through their Nix daemon).") { add, remove, list };
    }

    // The private key's text; it must look like one (a public key given by mistake is the common slip).
    private static string ReadKey(string file)
    {
        var text = File.ReadAllText(file);
        if (!text.Contains("PRIVATE KEY-----", StringComparison.Ordinal))
        {
            throw new CommandException($"{file} does not hold a private key (give the private half; the builder's authorized_keys holds the public one)");
        }

        return text;
    }

    // A host key line, given plainly or base64-encoded (Nix's machines files); one key, of a type ssh knows.
    private static string HostKey(string given)
    {
        var text = given.Trim();
        if (!text.Contains(' ', StringComparison.Ordinal))
        {
            try
            {
                text = Encoding.UTF8.GetString(Convert.FromBase64String(text)).Trim();
            }
            catch (FormatException)
            {
                throw new CommandException("--host-key is 'TYPE BASE64' (as in known_hosts) or that line base64-encoded");
            }
        }

        var parts = text.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 2 || !(parts[0].StartsWith("ssh-", StringComparison.Ordinal) || parts[0].StartsWith("ecdsa-", StringComparison.Ordinal)
            || parts[0].StartsWith("sk-", StringComparison.Ordinal)) || !IsBase64(parts[1]))
        {
            throw new CommandException("--host-key is 'TYPE BASE64' (as in known_hosts) or that line base64-encoded");
        }

        return $"{parts[0]} {parts[1]}";
    }

    private static bool IsBase64(string text) => text.Length > 0 && Convert.TryFromBase64String(text, new byte[text.Length], out _);
}
