using System.CommandLine;
using Kiln.Nix.StorePaths;
using Kiln.Store;
using static Kiln.Cli.Commands.AccountCommands;

namespace Kiln.Cli.Commands;

/// <summary>
/// <c>kiln pin add|list|remove</c>: paths an account keeps whatever garbage collection or retention would do
/// (<see cref="Pins"/>). Like the account commands they work on the data directory's database, with the server running or not.
/// </summary>
internal static class PinCommands
{
    public static Command Pin()
    {
        var addData = DataOption();
        var addJson = JsonOption();
        var addAccount = new Argument<string>("ACCOUNT");
        var addPath = new Argument<string>("PATH") { Description = "A store path in the account's store: /nix/store/HASH-NAME." };
        var name = new Option<string?>("--name") { Description = "The pin's name (default: the path's name); a pin of that name moves to PATH." };
        var add = new Command("add", "Pin a path (and its closure) in an account's store.") { addAccount, addPath, name, addData, addJson };
        add.SetAction(async (result, cancellationToken) =>
        {
            if (!StorePath.TryParse(result.GetValue(addPath)!, out var path))
            {
                throw new ArgumentException($"'{result.GetValue(addPath)}' is not a store path (/nix/store/HASH-NAME)");
            }

            var metadata = await OpenAsync(result.GetValue(addData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(addAccount)!, cancellationToken).ConfigureAwait(false);
                var pin = await Pins.AddAsync(metadata, account.Id, path, result.GetValue(name), cancellationToken).ConfigureAwait(false);
                Print(result.GetValue(addJson), Json(pin), $"pinned {pin.Path} as '{pin.Name}' for {account.Name}");
                return 0;
            }
        });

        var listData = DataOption();
        var listJson = JsonOption();
        var listAccount = new Argument<string>("ACCOUNT");
        var list = new Command("list", "List an account's pins: name, then path.") { listAccount, listData, listJson };
        list.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(listData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(listAccount)!, cancellationToken).ConfigureAwait(false);
                var pins = await Pins.ListAsync(metadata, account.Id, cancellationToken).ConfigureAwait(false);
                Print(result.GetValue(listJson), pins.Select(Json), string.Join("\n", pins.Select(p => $"{p.Name}\t{p.Path}")));
                return 0;
            }
        });

        var removeData = DataOption();
        var removeJson = JsonOption();
        var removeAccount = new Argument<string>("ACCOUNT");
        var removeName = new Argument<string>("NAME") { Description = "The pin's name (see 'kiln pin list')." };
        var remove = new Command("remove", "Remove a pin: its path goes at the next collection unless something else keeps it.") { removeAccount, removeName, removeData, removeJson };
        remove.SetAction(async (result, cancellationToken) =>
        {
            var metadata = await OpenAsync(result.GetValue(removeData)!, cancellationToken).ConfigureAwait(false);
            await using (metadata.ConfigureAwait(false))
            {
                var account = await AccountAsync(metadata, result.GetValue(removeAccount)!, cancellationToken).ConfigureAwait(false);
                var pin = await Pins.RemoveAsync(metadata, account.Id, result.GetValue(removeName)!, cancellationToken).ConfigureAwait(false);
                Print(result.GetValue(removeJson), Json(pin), $"removed pin '{pin.Name}' ({pin.Path}) of {account.Name}");
                return 0;
            }
        });

        return new Command("pin", "Keep paths in an account's store whatever garbage collection would do.") { add, list, remove };
    }

    private static object Json(Kiln.Store.Metadata.PinRecord pin) => new { name = pin.Name, path = pin.Path.ToString() };
}
