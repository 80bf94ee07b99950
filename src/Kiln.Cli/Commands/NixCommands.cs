using System.CommandLine;
using System.Text;
using Kiln.Nix;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;

namespace Kiln.Cli.Commands;

/// <summary>
/// <c>kiln nix …</c>: diagnostics that mirror Nix's own commands on Kiln's implementation of the formats, so anyone can
/// check Kiln against Nix (<c>kiln nix dump-path P | cmp - &lt;(nix-store --dump P)</c>).
/// </summary>
internal static class NixCommands
{
    public static Command Create()
    {
        var command = new Command("nix", "Nix format tools that behave like Nix's own commands.")
        {
            DumpPath(),
            HashPath(),
            RestorePath(),
            ListNar(),
            ShowDerivation(),
            CheckDerivation(),
            GenerateKey(),
            PublicKeyCommand(),
            SignNarInfo(),
        };
        return command;
    }

    private static Command DumpPath()
    {
        var path = new Argument<string>("path") { Description = "File, directory or symlink to archive." };
        var command = new Command("dump-path", "Write the NAR of PATH to stdout (like nix-store --dump).") { path };
        command.SetAction(result => DumpPath(result.GetValue(path)!));
        return command;
    }

    /// <summary><c>kiln nix dump-path PATH</c> (also called without the parser: see <see cref="KilnCommand"/>).</summary>
    public static int DumpPath(string path)
    {
        // Straight to file descriptor 1, so large files are copied by the kernel (sendfile). Single-threaded: handing
        // buffers to a writer thread costs more than writing them to stdout (measured: 0.41 s against 0.29 s for
        // 200 MiB of small files); hashing is where the second core pays.
        using var stdout = new Microsoft.Win32.SafeHandles.SafeFileHandle(1, ownsHandle: false);
        NarDumper.Dump(path, stdout);
        return 0;
    }

    private static Command HashPath()
    {
        var path = new Argument<string>("path") { Description = "File, directory or symlink to hash." };
        var type = new Option<string>("--type") { Description = "Hash algorithm: md5, sha1, sha256, sha512.", DefaultValueFactory = _ => "sha256" };
        var base16 = new Option<bool>("--base16") { Description = "Print in hexadecimal." };
        var base32 = new Option<bool>("--base32") { Description = "Print in Nix32 (the default)." };
        var base64 = new Option<bool>("--base64") { Description = "Print in base64." };
        var sri = new Option<bool>("--sri") { Description = "Print as an SRI hash (algo-base64)." };
        var flat = new Option<bool>("--flat") { Description = "Hash the file's contents instead of its NAR (like nix-hash --flat)." };
        var command = new Command("hash-path", "Print the hash of PATH's NAR (like nix-hash --type sha256 --base32).")
        {
            path, type, base16, base32, base64, sri, flat,
        };
        command.SetAction(result =>
        {
            var formats = new[] { (base16, HashFormat.Base16), (base32, HashFormat.Nix32), (base64, HashFormat.Base64), (sri, HashFormat.Sri) }
                .Where(f => result.GetValue(f.Item1)).Select(f => f.Item2).ToList();
            if (formats.Count > 1)
            {
                throw new CommandException("choose at most one of --base16, --base32, --base64, --sri");
            }

            var algorithm = NixHashAlgorithms.Parse(result.GetValue(type));
            using var hashing = new HashingStream(algorithm);
            var target = result.GetValue(path)!;
            if (result.GetValue(flat))
            {
                using var file = File.OpenRead(target);
                file.CopyTo(hashing, 1 << 20);
            }
            else
            {
                NarDumper.Dump(target, hashing, pipelined: true);
            }

            var format = formats.Count == 1 ? formats[0] : HashFormat.Nix32;
            Console.Out.Write(hashing.Finish().ToString(format, includeAlgorithm: false) + "\n");
            return 0;
        });
        return command;
    }

    private static Command RestorePath()
    {
        var directory = new Argument<string>("path") { Description = "Where to unpack; must not exist." };
        var command = new Command("restore-path", "Unpack the NAR on stdin at PATH (like nix-store --restore), refusing unsafe archives.") { directory };
        command.SetAction(result =>
        {
            using var stdin = Console.OpenStandardInput();
            NarExtractor.Restore(stdin, result.GetValue(directory)!);
            return 0;
        });
        return command;
    }

    private static Command ListNar()
    {
        var compact = new Option<bool>("--binary-cache") { Description = "Print the binary cache .ls document ({\"version\":1,\"root\":…}) instead." };
        var command = new Command("ls-nar", "Print the JSON listing of the NAR on stdin (like nix nar ls --json -R FILE /).") { compact };
        command.SetAction(result =>
        {
            using var stdin = Console.OpenStandardInput();
            WriteOut(output =>
            {
                if (result.GetValue(compact))
                {
                    NarListing.WriteBinaryCacheListing(stdin, output);
                }
                else
                {
                    NarListing.WriteListing(stdin, output, indent: false);
                }

                output.Write('\n');
            });
            return 0;
        });
        return command;
    }

    private static Command ShowDerivation()
    {
        var files = new Argument<string[]>("drv") { Description = "One or more .drv files.", Arity = ArgumentArity.OneOrMore };
        var command = new Command("show-derivation", "Print derivations as JSON, as nix show-derivation (Nix 2.8) does.") { files };
        command.SetAction(result =>
        {
            var derivations = result.GetValue(files)!.Select(LoadDerivation).ToList();
            WriteOut(output => DerivationJson.Write(output, derivations));
            return 0;
        });
        return command;
    }

    private static Command CheckDerivation()
    {
        var file = new Argument<string>("drv") { Description = "A .drv file; its input derivations are read from /nix/store." };
        var command = new Command(
            "check-derivation",
            "Recompute a derivation's output paths (and, for a file in /nix/store, its own path); exit 1 if they differ from the file.")
        {
            file,
        };
        command.SetAction(result =>
        {
            var (drvPath, derivation) = LoadDerivation(result.GetValue(file)!);
            var computed = DerivationHasher.ForLocalStore().ComputeOutputPaths(derivation);
            var mismatches = new List<string>();
            var ownPath = DerivationHasher.DerivationPath(derivation);
            WriteOut(output =>
            {
                foreach (var (outputName, path) in computed)
                {
                    output.Write($"{outputName} {(path.Length == 0 ? "(deferred)" : path)}\n");
                    var written = derivation.Outputs[outputName].Path;
                    if (written != path)
                    {
                        mismatches.Add($"output '{outputName}' is {Show(written)} in the derivation but should be {Show(path)}");
                    }
                }

                output.Write($"drv {ownPath}\n");
            });
            if (IsInStore(result.GetValue(file)!) && drvPath != ownPath)
            {
                mismatches.Add($"the derivation is stored at {drvPath} but its contents belong at {ownPath}");
            }

            foreach (var mismatch in mismatches)
            {
                Console.Error.WriteLine($"kiln: {mismatch}");
            }

            return mismatches.Count == 0 ? 0 : 1;
        });
        return command;
    }

    private static Command GenerateKey()
    {
        var name = new Argument<string>("name") { Description = "Key name, conventionally the cache's host name and a number, e.g. cache.example.org-1." };
        var secretFile = new Option<string?>("--secret-key-file") { Description = "Write the secret key here (mode 0600) instead of stdout." };
        var publicFile = new Option<string?>("--public-key-file") { Description = "Also write the public key here." };
        var command = new Command("generate-key", "Generate an Ed25519 signing key in Nix's format (like nix key generate-secret).")
        {
            name, secretFile, publicFile,
        };
        command.SetAction(result =>
        {
            var key = SecretKey.Generate(result.GetValue(name)!);
            if (result.GetValue(secretFile) is { } secretPath)
            {
                WriteNewFile(secretPath, key.ToString(), UnixFileMode.UserRead | UnixFileMode.UserWrite);
            }
            else
            {
                Console.Out.Write(key + "\n");
            }

            if (result.GetValue(publicFile) is { } publicPath)
            {
                WriteNewFile(publicPath, key.PublicKey.ToString(), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
            }

            return 0;
        });
        return command;
    }

    private static Command PublicKeyCommand()
    {
        var command = new Command("public-key", "Print the public key of the secret key on stdin (like nix key convert-secret-to-public).");
        command.SetAction(_ =>
        {
            var key = SecretKey.Parse(Console.In.ReadToEnd());
            Console.Out.Write(key.PublicKey + "\n");
            return 0;
        });
        return command;
    }

    private static Command SignNarInfo()
    {
        var keyFile = new Option<string>("--key") { Description = "Secret key file (name:base64).", Required = true };
        var command = new Command("sign-narinfo", "Read a narinfo on stdin and print it signed with the key (the signature nix store sign makes).") { keyFile };
        command.SetAction(result =>
        {
            var key = SecretKey.Parse(File.ReadAllText(result.GetValue(keyFile)!));
            var narInfo = NarInfo.Parse(Console.In.ReadToEnd(), "<stdin>");
            WriteOut(output => output.Write(narInfo.WithSignature(key).ToString()));
            return 0;
        });
        return command;
    }

    private static (StorePath DrvPath, Derivation Derivation) LoadDerivation(string file)
    {
        var derivation = ATerm.ParseFile(file);
        var drvPath = IsInStore(file) ? StorePath.Parse(Path.GetFullPath(file)) : DerivationHasher.DerivationPath(derivation);
        return (drvPath, derivation);
    }

    private static bool IsInStore(string file) => StorePath.TryParse(Path.GetFullPath(file), out _);

    private static string Show(string path) => path.Length == 0 ? "empty" : $"'{path}'";

    // Text goes out as the bytes its Nix strings stand for (a file name that is not UTF-8 stays as it was).
    private static void WriteOut(Action<TextWriter> write)
    {
        var text = new StringWriter(System.Globalization.CultureInfo.InvariantCulture) { NewLine = "\n" };
        write(text);
        using var stdout = Console.OpenStandardOutput();
        stdout.Write(NixString.Encode(text.ToString()));
    }

    private static void WriteNewFile(string path, string contents, UnixFileMode mode)
    {
        using var stream = new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = mode,
        });
        // No trailing newline, like the key files nix-store --generate-binary-cache-key writes.
        stream.Write(Encoding.UTF8.GetBytes(contents));
    }
}
