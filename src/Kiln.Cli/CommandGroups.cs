using System.CommandLine;
using Kiln.Cli.Commands;

namespace Kiln.Cli;

/// <summary>
/// The top-level command groups, by name, each built only when it runs. Methods rather than tables in fields, so the
/// native kiln (NativeAOT, which compiles only what it can reach) carries only the groups <see cref="Native"/> names.
/// </summary>
internal static class CommandGroups
{
    /// <summary>Every command: what the managed kiln runs.</summary>
    public static Dictionary<string, Func<Command>> All() => new(StringComparer.Ordinal)
    {
        ["nix"] = NixCommands.Create,
        ["serve"] = ServeCommands.Serve,
        ["store"] = ServeCommands.Store,
        [Kiln.Agent.BuiltinFetcher.CommandName] = ServeCommands.BuiltinFetchurl,
        ["account"] = AccountCommands.Account,
        ["usage"] = AccountCommands.Usage,
        ["settings"] = SettingsCommands.Settings,
        ["key"] = AccountCommands.Key,
        ["auth-keys"] = AccountCommands.AuthKeys,
        ["client-config"] = AccountCommands.ClientConfig,
        ["token"] = CacheCommands.Token,
        ["signing-key"] = CacheCommands.SigningKey,
        ["agent"] = AgentCommands.Agent,
        ["agent-token"] = AgentCommands.AgentTokens,
        ["agents"] = AgentCommands.Agents,
        ["builder"] = BuilderCommands.Builder,
        ["ci"] = CiCommands.Ci,
        ["pin"] = PinCommands.Pin,
    };

    /// <summary>
    /// The commands the native kiln runs itself: those an operator runs often, which need no more than the metadata
    /// store (SQLite or PostgreSQL) and no reflection. Each must stay free of what NativeAOT cannot compile (its
    /// build fails on a warning); everything else goes to the managed kiln. A group here may carry only some of its
    /// subcommands (<c>account</c>): the native kiln runs a subcommand its group has, and hands on the rest, the
    /// group's own help included, so that help reads the same whichever kiln ran.
    /// </summary>
    public static Dictionary<string, Func<Command>> Native() => new(StringComparer.Ordinal)
    {
        ["key"] = AccountCommands.Key,
        ["token"] = CacheCommands.Token,
        ["account"] = AccountCommands.AccountNative,
    };
}
