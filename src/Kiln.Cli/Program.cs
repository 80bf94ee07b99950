using Kiln.Cli;

// The native kiln marks the hand-over to this one (see Kiln.Cli.Native's ManagedKiln); it is not for the programs this
// kiln starts, where a native kiln would take it for a loop.
if (Environment.GetEnvironmentVariable(KilnCommand.HandedOverVariable) is not null)
{
    Environment.SetEnvironmentVariable(KilnCommand.HandedOverVariable, null);
}

return await KilnCommand.RunAsync(args, CommandGroups.All()).ConfigureAwait(false);
