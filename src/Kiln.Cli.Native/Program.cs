using Kiln.Cli;
using Kiln.Cli.Native;

return await KilnCommand.RunAsync(args, CommandGroups.Native(), ManagedKiln.Exec).ConfigureAwait(false);
