using System.CommandLine;
using Kiln.Cli.Commands;
using Kiln.Nix;

namespace Kiln.Cli;

/// <summary>
/// The <c>kiln</c> command line: builds the command tree and runs it. Every failure a user can cause ends as one
/// line on stderr and exit code 1, never a stack trace (set <c>KILN_DEBUG=1</c> to see one).
/// </summary>
internal static class KilnCommand
{
    /// <summary>
    /// Runs the command <paramref name="args"/> name, from <paramref name="groups"/> (top-level name to the group's
    /// constructor: only the group being run is built, so start-up does not grow with the number of commands).
    /// A command outside them goes to <paramref name="elsewhere"/> when given (the native kiln hands it to the managed
    /// one), so help, errors and the rest read the same whichever kiln ran.
    /// </summary>
    public static async Task<int> RunAsync(string[] args, IReadOnlyDictionary<string, Func<Command>> groups, Func<string[], int>? elsewhere = null)
    {
        // What scripts run once per file, as they run nix-store --dump: straight to the work, without building the
        // parser (a sixth of the command's start). Whatever the parser would read as more than a path (an option, a
        // help alias such as /?, an @response-file) still goes to it.
        if (args is ["nix", "dump-path", var dumped] && !ParserWouldReadMore(dumped))
        {
            return await InvokeAsync(() => Task.FromResult(NixCommands.DumpPath(dumped))).ConfigureAwait(false);
        }

        var group = args.Length > 0 ? groups.GetValueOrDefault(args[0]) : null;
        if (group is null && elsewhere is not null)
        {
            return elsewhere(args); // before any parser is built: the other kiln builds its own
        }

        // Help says "kiln" whatever the program file is called (a symlink, kiln-managed): otherwise the native kiln and
        // the managed one it hands on to could name themselves differently within one command's help.
        var root = new RootCommand("Kiln: a Nix build service that stock nix talks to.") { HelpName = "kiln" };
        if (group is not null)
        {
            var command = group();
            // Of a group, the other kiln runs what this one's lacks (the native kiln carries some groups in part), and
            // the group's own help and usage errors, which list every subcommand.
            if (elsewhere is not null && command.Subcommands.Count > 0 && !(args.Length > 1 && command.Subcommands.Any(s => s.Name == args[1])))
            {
                return elsewhere(args);
            }

            root.Subcommands.Add(command);
        }
        else
        {
            foreach (var create in groups.Values)
            {
                root.Subcommands.Add(create());
            }
        }

        if (args.Length > 0 && args[0] == "serve")
        {
            try
            {
                args = ConfigFile.Expand(args, root.Subcommands.First(c => c.Name == "serve"));
            }
            catch (CommandException e)
            {
                return Fail(e.Message);
            }
        }

        var parseResult = root.Parse(args);
        if (parseResult.Errors.Count > 0)
        {
            return Fail($"{parseResult.Errors[0].Message} (see 'kiln --help')");
        }

        // kiln serve's host stops on SIGTERM and SIGINT itself, within the shutdown grace it is given; System.CommandLine's
        // own handling would end the process 2 s after the signal (exit 143), in the middle of that clean stop.
        var serve = parseResult.CommandResult.Command.Name == "serve";
        var configuration = new InvocationConfiguration { EnableDefaultExceptionHandler = false };
        if (serve)
        {
            configuration.ProcessTerminationTimeout = null;
        }

        return await InvokeAsync(() => parseResult.InvokeAsync(configuration)).ConfigureAwait(false);
    }

    /// <summary>
    /// Set by the native kiln for the managed kiln it execs (which clears it at once): a native kiln that finds it set
    /// was itself started as kiln-managed, and handing on again would exec itself for ever.
    /// </summary>
    public const string HandedOverVariable = "KILN_HANDED_OVER";

    private static bool ParserWouldReadMore(string argument) =>
        argument.StartsWith('-') || argument.StartsWith('@')
        || argument is "/h" or "/?" || argument.StartsWith("/h:", StringComparison.Ordinal) || argument.StartsWith("/h=", StringComparison.Ordinal)
        || argument.StartsWith("/?:", StringComparison.Ordinal) || argument.StartsWith("/?=", StringComparison.Ordinal);

    // Runs a command: a failure the user can act on is one line on stderr, anything else an internal error.
    private static async Task<int> InvokeAsync(Func<Task<int>> command)
    {
        try
        {
            return await command().ConfigureAwait(false);
        }
        catch (Exception e) when (IsUserFacing(e))
        {
            return Fail(e.Message);
        }
        catch (Exception e)
        {
            return Fail(Environment.GetEnvironmentVariable("KILN_DEBUG") == "1"
                ? e.ToString()
                : $"internal error ({e.GetType().Name}): {e.Message}");
        }
    }

    private static bool IsUserFacing(Exception e) =>
        e is NixFormatException or IOException or UnauthorizedAccessException or CommandException or ArgumentException or Kiln.Protocol.KilnException;

    /// <summary>Prints <c>kiln: error: message</c> on one line and returns exit code 1.</summary>
    public static int Fail(string message)
    {
        var oneLine = message.ReplaceLineEndings(" ").Trim();
        Console.Error.WriteLine($"kiln: error: {oneLine}");
        return 1;
    }
}

/// <summary>A failure a command reports to the user as is.</summary>
internal sealed class CommandException(string message) : Exception(message);
