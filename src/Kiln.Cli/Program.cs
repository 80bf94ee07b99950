using Kiln.Cli;

return await KilnCommand.RunAsync(args, CommandGroups.All()).ConfigureAwait(false);
