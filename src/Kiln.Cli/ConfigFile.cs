using System.CommandLine;
using System.Globalization;

namespace Kiln.Cli;

/// <summary>
/// <c>kiln serve --config FILE</c>: the server's settings from a file, one <c>name = value</c> per line in nix.conf's
/// manner (<c>#</c> starts a comment; a name is an option's long name without <c>--</c>; a name given again adds a
/// value, as a repeated option does; a switch takes <c>true</c> or <c>false</c>). What the command line gives wins:
/// the file's lines become options only for those the command line does not name.
/// </summary>
internal static class ConfigFile
{
    /// <summary>The arguments with the file's settings put before the command's own, when <c>--config FILE</c> is among them.</summary>
    /// <exception cref="CommandException">The file cannot be read, or names an option the command does not have.</exception>
    public static string[] Expand(string[] args, Command command)
    {
        // --config FILE or --config=FILE.
        var at = Array.FindIndex(args, a => a == "--config" || a.StartsWith("--config=", StringComparison.Ordinal));
        if (at < 0)
        {
            return args;
        }

        var joined = args[at].Length > "--config".Length;
        if (!joined && at + 1 >= args.Length)
        {
            throw new CommandException("--config needs a file");
        }

        var path = joined ? args[at]["--config=".Length..] : args[at + 1];
        var taken = joined ? 1 : 2;
        var given = args.Where(a => a.StartsWith("--", StringComparison.Ordinal)).Select(a => a.Split('=', 2)[0]).ToHashSet(StringComparer.Ordinal);
        string[] lines;
        try
        {
            lines = File.ReadAllLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CommandException($"cannot read the config file '{path}': {e.Message}");
        }

        var added = new List<string>();
        for (var number = 1; number <= lines.Length; number++)
        {
            var line = lines[number - 1];
            var text = (line.IndexOf('#', StringComparison.Ordinal) is var hash and >= 0 ? line[..hash] : line).Trim();
            if (text.Length == 0)
            {
                continue;
            }

            var equals = text.IndexOf('=', StringComparison.Ordinal);
            var name = (equals < 0 ? text : text[..equals]).Trim();
            var value = equals < 0 ? "" : text[(equals + 1)..].Trim();
            string Where() => string.Create(CultureInfo.InvariantCulture, $"{path}, line {number}");
            var option = command.Options.FirstOrDefault(o => o.Name == "--" + name || o.Aliases.Contains("--" + name));
            if (option is null || name == "config" || equals < 0)
            {
                throw new CommandException(option is null || name == "config"
                    ? $"{Where()}: kiln serve has no setting '{name}'"
                    : $"{Where()}: '{name}' needs '= value'");
            }

            // The command line's own value wins (under any of the option's names).
            if (given.Contains(option.Name) || option.Aliases.Any(given.Contains))
            {
                continue;
            }

            if (option.ValueType == typeof(bool))
            {
                added.AddRange(value.ToLowerInvariant() switch
                {
                    "true" or "yes" or "on" => [option.Name],
                    "false" or "no" or "off" => [],
                    _ => throw new CommandException($"{Where()}: {name} is true or false"),
                });
            }
            else
            {
                added.AddRange([option.Name, value]);
            }
        }

        // After the command's name, before its own arguments; --config itself is taken out.
        return [args[0], .. added, .. args[1..at], .. args[(at + taken)..]];
    }
}
