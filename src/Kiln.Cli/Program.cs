using Kiln.Cli;

return await KilnCommand.RunAsync(args).ConfigureAwait(false);
