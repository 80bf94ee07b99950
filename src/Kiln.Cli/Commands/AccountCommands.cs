using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Kiln.Accounts;
using Kiln.Api;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Cli.Commands;

/// <summary>
/// <c>kiln account …</c>, <c>kiln key …</c> and <c>kiln auth-keys</c>: accounts and the SSH keys they log in with.
/// They work on the data directory's database directly, with the server running or not (SQLite in WAL mode takes
/// writers from several processes); <c>auth-keys</c> only ever opens it read-only.
/// </summary>
internal static class AccountCommands
{
    // Relaxed escaping: fingerprints keep their "+" and "/" as ssh-keygen prints them.
    private static readonly JsonSerializerOptions Json = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    // The API's documents (usage) as the API and the shell show them.
    private static readonly JsonSerializerOptions ApiJson = new(Json) { PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    internal static Option<string> DataOption() => new("--data") { Description = "The data directory of the Kiln server.", Required = true };

    internal static Option<bool> JsonOption() => new("--json") { Description = "Print JSON instead of text." };

    internal static async Task<IMetadataStore> OpenAsync(string data, CancellationToken cancellationToken)
    {
        var directory = Path.GetFullPath(data);
        Directory.CreateDirectory(directory);
        var metadata = MetadataStores.Open(MetadataStores.ForDataDirectory(directory));
        await metadata.MigrateAsync(cancellationToken).ConfigureAwait(false);
        Directories.AddOrUpdate(metadata, directory);
        return metadata;
    }

    // The data directory each metadata store opened here belongs to: its credentials key seals accounts' netrc.
    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<IMetadataStore, string> Directories = new();

    /// <summary>The account services, as the operator (who may do anything: proofs are for keys adding keys).</summary>
    internal static AccountService Service(IMetadataStore metadata) =>
        new(metadata, Directories.TryGetValue(metadata, out var directory) ? CredentialSeal.Sealing(metadata, directory) : metadata, new SshKeygenProofs(), "operator");

    internal static Task<AccountRecord> AccountAsync(IMetadataStore metadata, string name, CancellationToken cancellationToken) =>
        Service(metadata).AccountAsync(Actor.Operator, name, cancellationToken);

    internal static void Print(bool json, object value, string text)
    {
        Console.Out.Write((json ? JsonSerializer.Serialize(value, Json) : text) + "\n");
    }

    /// <summary>
    /// As <see cref="Print(bool, object, string)"/>, for a document built as nodes: what the commands the native kiln
    /// runs print, since reflection over anonymous types (the serializer's way) is not there ahead of time.
    /// </summary>
    internal static void Print(bool json, JsonNode value, string text)
    {
        Console.Out.Write((json ? value.ToJsonString(Json) : text) + "\n");
    }

    /// <summary>A JSON array of <paramref name="items"/>, each as <paramref name="each"/> writes it.</summary>
    internal static JsonArray JsonList<T>(IEnumerable<T> items, Func<T, JsonNode?> each) => [.. items.Select(each)];

    private static JsonObject KeyJson(SshKeyRecord key) => new()
    {
        ["account"] = key.AccountName,
        ["fingerprint"] = key.Fingerprint,
        ["type"] = key.Key.Type,
        ["comment"] = key.Key.Comment,
        ["permissions"] = JsonList(KeyPermissionNames.ToNames(key.Permissions), name => name),
        ["enabled"] = key.Enabled,
        ["created"] = DateTimeOffset.FromUnixTimeSeconds(key.Created).ToString("yyyy-MM-ddTHH:mm:ssZ", System.Globalization.CultureInfo.InvariantCulture),
    };

    private static string KeyText(SshKeyRecord key) =>
        $"{key.Fingerprint} {key.Key.Type} {KeyPermissionNames.Format(key.Permissions)}{(key.Enabled ? "" : " (disabled)")}{(key.Key.Comment.Length > 0 ? " " + key.Key.Comment : "")}";

    public static Command Usage()
    {
        var data = DataOption();
        var json = JsonOption();
        var account = new Argument<string>("ACCOUNT");
        var since = new Option<string?>("--since") { Description = "From this date (2026-12-01, 2026-12-01T12:00:00Z or Unix seconds); default: all time." };
        var until = new Option<string?>("--until") { Description = "Before this date." };
        var by = new Option<string?>("--by") { Description = "day (the default) or month." };
        var command = new Command("usage", "What an account used: builds its requests started, how many succeeded, CPU and wall hours, and its storage, per day or month.")
        {
            account, since, until, by, data, json,
        };
        command.SetAction((result, cancellationToken) => WithAccountAsync(result.GetValue(data)!, result.GetValue(account)!, async (_, _, view) =>
        {
            var usage = await UsageReports.ReportAsync(view, BuildFilters.Parse(null, null, result.GetValue(since), result.GetValue(until)),
                UsageReports.ByMonth(result.GetValue(by)), cancellationToken).ConfigureAwait(false);
            Console.Out.Write((result.GetValue(json) ? JsonSerializer.Serialize(usage, ApiJson) : UsageReports.Text(usage)) + "\n");
            return 0;
        }, cancellationToken));
        return command;
    }

    // The whole store (logs and blobs as well as the metadata), the account found as the operator finds it, and its
    // view: for the commands that need more than the metadata. (With kiln serve running too.)
    private static async Task<int> WithAccountAsync(string data, string name, Func<KilnStore, AccountRecord, StoreView, Task<int>> work,
        CancellationToken cancellationToken)
    {
        var store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = Path.GetFullPath(data) }, cancellationToken).ConfigureAwait(false);
        await using (store.ConfigureAwait(false))
        {
            var service = new AccountService(store.Accounts, store.Settings, new SshKeygenProofs(), "operator");
            var account = await service.AccountAsync(Actor.Operator, name, cancellationToken).ConfigureAwait(false);
            using var view = store.OpenView(await store.CallerForAccountAsync(account.Name, KeyPermissions.StoreRead | KeyPermissions.BuildRead, cancellationToken).ConfigureAwait(false));
            return await work(store, account, view).ConfigureAwait(false);
        }
    }

    /// <summary>All of <c>kiln account</c>: what the managed kiln runs.</summary>
    public static Command Account()
    {
        var account = AccountNative();
        account.Subcommands.Add(AccountDelete());
        account.Subcommands.Add(AccountPushKey());
        return account;
    }

    private static JsonObject AccountJson(AccountRecord account) => new() { ["name"] = account.Name, ["id"] = account.Id };

    /// <summary>
    /// <c>kiln account create | list | set</c>, which need the metadata store alone: what the native kiln runs of the
    /// group (delete and push-key open the blob store, whose S3 SDK is not NativeAOT-clean: the managed kiln's).
    /// </summary>
    public static Command AccountNative()
    {
        var createData = DataOption();
        var createJson = JsonOption();
        var name = new Argument<string>("NAME") { Description = "The account's name: a-z, 0-9, '_' and '-'." };
        var create = new Command("create", "Create an account.") { name, createData, createJson };
        create.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(createData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await Service(metadata).CreateAccountAsync(Actor.Operator, result.GetValue(name)!, cancellationToken).ConfigureAwait(false);
                Print(result.GetValue(createJson), AccountJson(account), $"created account {account.Name}");
                return 0;
            }
        });

        var listData = DataOption();
        var listJson = JsonOption();
        var list = new Command("list", "List the accounts.") { listData, listJson };
        list.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(listData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var accounts = await Service(metadata).ListAccountsAsync(Actor.Operator, cancellationToken).ConfigureAwait(false);
                Print(result.GetValue(listJson), JsonList(accounts, AccountJson), string.Join("\n", accounts.Select(a => a.Name)));
                return 0;
            }
        });

        var setData = DataOption();
        var setJson = JsonOption();
        var setName = new Argument<string>("NAME");
        var publicCache = new Option<bool>("--public-cache") { Description = "Anyone may read the account's store over HTTP without a token, as a public binary cache." };
        var privateCache = new Option<bool>("--private-cache") { Description = "Only the account's tokens read its store over HTTP (the default)." };
        var substituters = new Option<string?>("--substituters") { Description = "Upstream binary caches Kiln fetches from for this account, space-separated ('' for the server's default)." };
        var trustedKeys = new Option<string?>("--trusted-public-keys") { Description = "Keys (name:base64) trusted for the account's upstream caches, besides the server's, space-separated." };
        var netrcFile = new Option<string?>("--netrc-file") { Description = "Credentials for the account's upstream caches, in netrc format ('' to remove)." };
        var set = new Command("set", "Change an account's settings.") { setName, publicCache, privateCache, substituters, trustedKeys, netrcFile, setData, setJson };
        set.SetAction(async (result, cancellationToken) =>
        {
            var (makePublic, makePrivate) = (result.GetValue(publicCache), result.GetValue(privateCache));
            var (caches, keys, netrcPath) = (result.GetValue(substituters), result.GetValue(trustedKeys), result.GetValue(netrcFile));
            if (makePublic && makePrivate)
            {
                throw new CommandException("say --public-cache or --private-cache, not both");
            }

            if (!makePublic && !makePrivate && caches is null && keys is null && netrcPath is null)
            {
                throw new CommandException("nothing to set (see 'kiln account set --help')");
            }

            var netrc = netrcPath is null ? null : netrcPath.Length == 0 ? "" : File.ReadAllText(netrcPath);
            var metadata = await OpenAsync(result.GetValue(setData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var service = Service(metadata);
                var account = await service.AccountAsync(Actor.Operator, result.GetValue(setName)!, cancellationToken).ConfigureAwait(false);
                var settings = await service.ChangeSettingsAsync(Actor.Operator, account,
                    new SettingsChange(makePublic ? true : makePrivate ? false : null, caches, keys, netrc), cancellationToken).ConfigureAwait(false);
                Print(result.GetValue(setJson), new JsonObject
                {
                    ["name"] = account.Name,
                    ["publicCache"] = settings.PublicCache,
                    ["substituters"] = settings.Substituters,
                    ["trustedPublicKeys"] = settings.TrustedPublicKeys,
                    ["credentials"] = settings.HasCredentials,
                }, $"{account.Name}: {(settings.PublicCache ? "public" : "private")} cache; substituters '{settings.Substituters}'; trusted keys '{settings.TrustedPublicKeys}'{(settings.HasCredentials ? "; with credentials" : "")}");
                return 0;
            }
        });

        return new Command("account", "Manage accounts.") { create, list, set };
    }

    private static Command AccountDelete()
    {
        var deleteData = DataOption();
        var deleteJson = JsonOption();
        var deleteName = new Argument<string>("NAME");
        var yes = new Option<bool>("--yes") { Description = "Do not ask: delete at once (for scripts)." };
        var delete = new Command("delete", "Delete an account: its keys, tokens, signing key, settings, pins, build records and logs, and its view of the store " +
            "(content other accounts hold stays theirs; what only this account held goes with the next blob sweep). Asks for the name again unless --yes.")
        {
            deleteName, yes, deleteData, deleteJson,
        };
        // (With kiln serve running too: the deletion is one transaction, and the server's next look-up of a key or token finds none.)
        delete.SetAction((result, cancellationToken) => WithAccountAsync(result.GetValue(deleteData)!, result.GetValue(deleteName)!, async (store, account, view) =>
        {
            var keys = await store.Accounts.ListSshKeysAsync(account.Id, cancellationToken).ConfigureAwait(false);
            var tokens = await store.Accounts.ListTokensAsync(account.Id, cancellationToken).ConfigureAwait(false);
            var (paths, narBytes) = await view.StorageAsync(cancellationToken).ConfigureAwait(false);
            var what = $"account {account.Name}: {keys.Count} SSH keys, {tokens.Count} tokens, {paths} paths ({narBytes} bytes of NAR, content other accounts hold included)";
            if (!result.GetValue(yes))
            {
                Console.Error.Write($"This deletes {what}, its build records and logs. It cannot be undone.\nType the account's name to delete it: ");
                if (Console.In.ReadLine()?.Trim() != account.Name)
                {
                    throw new CommandException($"not deleted: the name typed was not '{account.Name}'");
                }
            }

            var (builds, logsLeft) = await store.DeleteAccountAsync(account.Id, cancellationToken).ConfigureAwait(false)
                ?? throw new CommandException($"there is no account '{account.Name}' (deleted meanwhile?)");
            // The record of it: on stderr, where kiln's log lines go (a service manager keeps them), and the answer on stdout.
            Console.Error.Write($"kiln: {DateTimeOffset.UtcNow:yyyy-MM-ddTHH:mm:ssZ} operator deleted {what}, {builds} build records" +
                (logsLeft > 0 ? $"; {logsLeft} of their logs could not be deleted (the log directory or bucket failed)\n" : "\n"));
            Print(result.GetValue(deleteJson), new { name = account.Name, id = account.Id, keys = keys.Count, tokens = tokens.Count, paths, narBytes, builds },
                $"deleted account {account.Name}");
            return 0;
        }, cancellationToken));
        return delete;
    }

    private static Command AccountPushKey()
    {
        var pushKeyData = DataOption();
        var pushKeyName = new Argument<string>("NAME");
        var pushKey = new Command("push-key", "Print the account's push key (made on first use): Kiln logs in with it to the account's ssh-ng:// push-to targets, " +
            "so add it to their authorized_keys.") { pushKeyName, pushKeyData };
        pushKey.SetAction((result, cancellationToken) => WithAccountAsync(result.GetValue(pushKeyData)!, result.GetValue(pushKeyName)!, async (store, account, _) =>
        {
            Console.Out.Write(await Kiln.Push.PushKeys.PublicKeyAsync(store, account.Id, cancellationToken).ConfigureAwait(false) + "\n");
            return 0;
        }, cancellationToken));
        return pushKey;
    }

    public static Command Key()
    {
        var addData = DataOption();
        var addJson = JsonOption();
        var addAccount = new Argument<string>("ACCOUNT");
        var addKey = new Argument<string>("KEY") { Description = "The public key, as in ~/.ssh/id_ed25519.pub: 'ssh-ed25519 AAAA… comment'." };
        var permissions = new Option<string>("--permissions")
        {
            Description = "What the key may do, comma-separated: store:read, store:write, build:read, build:write, account:write (default: all).",
            DefaultValueFactory = _ => KeyPermissionNames.Format(KeyPermissions.All),
        };
        var add = new Command("add", "Let a key log in to an account.") { addAccount, addKey, permissions, addData, addJson };
        add.SetAction(async (result, cancellationToken) =>
        {
            var key = SshPublicKey.Parse(result.GetValue(addKey)!);
            var granted = KeyPermissionNames.Parse(result.GetValue(permissions)!);
            var metadata = await OpenAsync(result.GetValue(addData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var service = Service(metadata);
                var account = await service.AccountAsync(Actor.Operator, result.GetValue(addAccount)!, cancellationToken).ConfigureAwait(false);
                var added = (await service.AddKeyAsync(Actor.Operator, account, key, granted, proof: null, cancellationToken).ConfigureAwait(false)).Added!;

                Print(result.GetValue(addJson), KeyJson(added), $"added {KeyText(added)}");
                return 0;
            }
        });

        var listData = DataOption();
        var listJson = JsonOption();
        var listAccount = new Argument<string>("ACCOUNT");
        var list = new Command("list", "List an account's keys.") { listAccount, listData, listJson };
        list.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(listData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(listAccount)!, cancellationToken).ConfigureAwait(false);
                var keys = await Service(metadata).ListKeysAsync(Actor.Operator, account, cancellationToken).ConfigureAwait(false);
                Print(result.GetValue(listJson), JsonList(keys, KeyJson), string.Join("\n", keys.Select(KeyText)));
                return 0;
            }
        });

        var removeData = DataOption();
        var removeJson = JsonOption();
        var removeAccount = new Argument<string>("ACCOUNT");
        var removeKey = new Argument<string>("KEY") { Description = "The key's fingerprint (SHA256:…, see 'kiln key list') or the public key itself." };
        var remove = new Command("remove", "Stop a key logging in to an account.") { removeAccount, removeKey, removeData, removeJson };
        remove.SetAction(async (result, cancellationToken) =>
        {
            var given = result.GetValue(removeKey)!.Trim();
            var fingerprint = given.StartsWith("SHA256:", StringComparison.Ordinal) ? given : SshPublicKey.Parse(given).Fingerprint;
            var metadata = await OpenAsync(result.GetValue(removeData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(removeAccount)!, cancellationToken).ConfigureAwait(false);
                await Service(metadata).RemoveKeyAsync(Actor.Operator, account, fingerprint, cancellationToken).ConfigureAwait(false);

                Print(result.GetValue(removeJson), new JsonObject { ["account"] = account.Name, ["fingerprint"] = fingerprint, ["removed"] = true }, $"removed {fingerprint}");
                return 0;
            }
        });

        return new Command("key", "Manage the SSH keys accounts log in with.") { add, list, remove };
    }

    /// <summary>
    /// sshd's AuthorizedKeysCommand (<c>kiln auth-keys --data DIR --bridge … USER %t %k</c>): for a known, enabled key
    /// it prints one authorized_keys line forcing the bridge with the key's id; for anything else it prints nothing
    /// (and sshd refuses the key). It runs on every login: it opens the database read-only and does one lookup.
    /// </summary>
    public static Command AuthKeys()
    {
        var data = DataOption();
        var bridge = new Option<string>("--bridge") { Description = "The forced command sshd runs for the key (kiln-bridge).", Required = true };
        var user = new Argument<string>("USER") { Description = "The login user (%u); not used, every key names its account." };
        var type = new Argument<string>("TYPE") { Description = "The offered key's type (%t)." };
        var blob = new Argument<string>("KEY") { Description = "The offered key, base64 (%k)." };
        var command = new Command("auth-keys", "Answer sshd's AuthorizedKeysCommand: the forced-command line for a known key, nothing otherwise.")
        {
            data, bridge, user, type, blob,
        };
        command.SetAction(async (result, cancellationToken) =>
        {
            SshPublicKey offered;
            try
            {
                offered = SshPublicKey.FromParts(result.GetValue(type)!, result.GetValue(blob)!);
            }
            catch (ArgumentException)
            {
                return 0; // not a key Kiln could have: nothing to authorise
            }

            var url = MetadataStores.ForDataDirectory(result.GetValue(data)!);
            if (!MetadataStores.Exists(url))
            {
                return 0;
            }

            var metadata = MetadataStores.Open(url, readOnly: true);
            await using (metadata.ConfigureAwait(false))
            {
                var key = await metadata.FindSshKeyAsync(offered.Type, offered.Blob, cancellationToken).ConfigureAwait(false);
                if (key is not null && key.Enabled)
                {
                    // restrict: no forwarding, no pty unless asked (ssh -t re-enables it with pty), no user rc. exec: the
                    // login shell sshd runs the command with becomes the bridge instead of waiting for it (no fork per login).
                    Console.Out.Write($"command=\"exec {result.GetValue(bridge)} {key.Id}\",restrict,pty {key.Key.Type} {key.Key.Blob}\n");
                }
            }

            return 0;
        });
        return command;
    }
    /// <summary>
    /// <c>kiln client-config</c>: what a user pastes to reach this Kiln over SSH: an <c>~/.ssh/config</c> entry with the
    /// host key pinned, <c>nix.conf</c> lines (Kiln's build key as trusted, ssh-ng substituter) and a machines line.
    /// </summary>
    public static Command ClientConfig()
    {
        var data = DataOption();
        var host = new Option<string>("--host") { Description = "The name or address clients reach this machine by.", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "The port Kiln's sshd listens on (kiln serve --ssh-listen).", DefaultValueFactory = _ => 2222 };
        var user = new Option<string>("--ssh-user") { Description = "The login user (kiln serve --ssh-user).", DefaultValueFactory = _ => "kiln" };
        var key = new Option<string>("--identity") { Description = "The client's private key file.", DefaultValueFactory = _ => "~/.ssh/id_ed25519" };
        var command = new Command("client-config", "Print ~/.ssh/config, nix.conf and machines lines for clients of this Kiln.") { data, host, port, user, key };
        command.SetAction(result =>
        {
            var directory = Path.GetFullPath(result.GetValue(data)!);
            var hostKeyFile = Path.Combine(directory, "ssh", "ssh_host_ed25519_key.pub");
            var buildKeyFile = Path.Combine(directory, "keys", "build.public");
            if (!File.Exists(hostKeyFile) || !File.Exists(buildKeyFile))
            {
                throw new CommandException($"'{directory}' has no SSH host key or build key yet: start 'kiln serve --data {directory}' once first");
            }

            var hostKey = string.Join(' ', File.ReadAllText(hostKeyFile).Split(' ').Take(2));
            var buildKey = File.ReadAllText(buildKeyFile).Trim();
            var (name, p, u, identity) = (result.GetValue(host)!, result.GetValue(port), result.GetValue(user)!, result.GetValue(key)!);
            var known = p == 22 ? name : $"[{name}]:{p}";
            Console.Out.Write($"""
                # ~/.ssh/config (and ~root/.ssh/config for the nix-daemon's remote builds)
                Host kiln
                  HostName {name}
                  Port {p}
                  User {u}
                  IdentityFile {identity}
                  IdentitiesOnly yes
                  StrictHostKeyChecking yes
                  # the host key, pinned: also add this line to ~/.ssh/known_hosts
                  #   {known} {hostKey}
                  # one connection for many sessions: a remote builder opens a session per derivation
                  ControlMaster auto
                  ControlPath ~/.ssh/kiln-%C
                  ControlPersist 10m

                # nix.conf: trust what Kiln built, and fetch it from Kiln
                extra-trusted-public-keys = {buildKey}
                extra-substituters = ssh-ng://kiln

                # /etc/nix/machines (or builders = …): Kiln as a remote builder
                ssh-ng://kiln x86_64-linux - 8 1 big-parallel

                # remote store: nix build --eval-store auto --store ssh-ng://kiln …

                """);
            return 0;
        });
        return command;
    }
}
