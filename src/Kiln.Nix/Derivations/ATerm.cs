using System.Text;
using Kiln.Nix.StorePaths;

namespace Kiln.Nix.Derivations;

/// <summary>A .drv file that cannot be parsed.</summary>
public sealed class DerivationFormatException(string message) : NixFormatException(message);

/// <summary>
/// The <c>.drv</c> file format: <c>Derive([outputs],[inputDrvs],[inputSrcs],"system","builder",[args],[env])</c> with no
/// whitespace (Nix's <c>parseDerivation</c> and <c>Derivation::unparse</c>; manual: <c>protocols/derivation-aterm.md</c>).
/// The builder, arguments and environment are printed with <c>"</c>, <c>\</c>, newline, CR and tab escaped; the other
/// fields (output names, paths, hash algorithms and hashes, input derivations and sources, the platform) are printed
/// as they are, as Nix 2.4+ prints them. On reading, <c>\x</c> for any other x is x. Strings are bytes, kept
/// losslessly (<see cref="NixString"/>). Dynamic-derivation files (<c>DrvWithVersion</c>) are refused.
/// </summary>
public static class ATerm
{
    /// <summary>The largest .drv file Kiln will parse.</summary>
    public const int MaxSize = 64 << 20;

    /// <summary>Parses a .drv file's bytes. <paramref name="name"/> is the derivation name (from its store path).</summary>
    /// <exception cref="DerivationFormatException">Malformed.</exception>
    public static Derivation Parse(ReadOnlySpan<byte> bytes, string name)
    {
        if (bytes.Length > MaxSize)
        {
            throw new DerivationFormatException($"derivation is larger than {MaxSize} bytes");
        }

        return Parse(NixString.Decode(bytes), name);
    }

    /// <summary>Parses the text of a .drv file.</summary>
    public static Derivation Parse(string text, string name)
    {
        ArgumentNullException.ThrowIfNull(text);
        var parser = new Parser(text);
        return parser.ParseDerivation(name);
    }

    /// <summary>
    /// Parses a .drv file from disk. Its name comes from its file name: the part after the hash when the file is
    /// named like a store path (in the store or a copy of one), otherwise the file name without <c>.drv</c>.
    /// </summary>
    public static Derivation ParseFile(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        var fileName = Path.GetFileName(path);
        if (!fileName.EndsWith(".drv", StringComparison.Ordinal))
        {
            throw new DerivationFormatException($"'{path}' is not a derivation (its name does not end in .drv)");
        }

        var name = StorePath.IsValidBaseName(fileName)
            ? Derivation.NameFromPath(StorePath.FromBaseName(fileName))
            : fileName[..^4];
        using var stream = File.OpenRead(path);
        if (stream.Length > MaxSize)
        {
            throw new DerivationFormatException($"derivation '{path}' is larger than {MaxSize} bytes");
        }

        var bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        return Parse(bytes, name);
    }

    /// <summary>Prints a derivation as Nix writes it.</summary>
    public static string Print(Derivation derivation) => Print(derivation, maskOutputs: false, inputDerivationHashes: null);

    /// <summary>The bytes of <see cref="Print(Derivation)"/> (the .drv file).</summary>
    public static byte[] PrintBytes(Derivation derivation) => NixString.Encode(Print(derivation));

    /// <summary>
    /// Prints a derivation, optionally with its output paths (and the environment variables named after outputs)
    /// blanked, and with the input derivations replaced by a map of their modulo hashes — the form that
    /// <see cref="DerivationHasher"/> hashes.
    /// </summary>
    internal static string Print(Derivation derivation, bool maskOutputs, SortedDictionary<string, SortedSet<string>>? inputDerivationHashes)
    {
        var s = new StringBuilder(4096);
        s.Append("Derive([");
        var first = true;
        foreach (var (outputName, output) in derivation.Outputs)
        {
            Separator(s, ref first);
            s.Append('(');
            AppendRaw(s, outputName);
            s.Append(',');
            AppendRaw(s, maskOutputs ? "" : output.Path);
            s.Append(',');
            AppendRaw(s, output.HashAlgo);
            s.Append(',');
            AppendRaw(s, output.Hash);
            s.Append(')');
        }

        s.Append("],[");
        first = true;
        if (inputDerivationHashes is null)
        {
            foreach (var (path, outputs) in derivation.InputDerivations)
            {
                Separator(s, ref first);
                AppendInputDerivation(s, path.FullPath, outputs);
            }
        }
        else
        {
            foreach (var (hash, outputs) in inputDerivationHashes)
            {
                Separator(s, ref first);
                AppendInputDerivation(s, hash, outputs);
            }
        }

        s.Append("],");
        AppendList(s, derivation.InputSources.Select(p => p.FullPath), escape: false);
        s.Append(',');
        AppendRaw(s, derivation.Platform);
        s.Append(',');
        AppendString(s, derivation.Builder);
        s.Append(',');
        AppendList(s, derivation.Arguments, escape: true);
        s.Append(",[");
        first = true;
        foreach (var (key, value) in derivation.Environment)
        {
            Separator(s, ref first);
            s.Append('(');
            AppendString(s, key);
            s.Append(',');
            AppendString(s, maskOutputs && derivation.Outputs.ContainsKey(key) ? "" : value);
            s.Append(')');
        }

        s.Append("])");
        return s.ToString();
    }

    private static void AppendInputDerivation(StringBuilder s, string key, SortedSet<string> outputs)
    {
        s.Append('(');
        AppendRaw(s, key);
        s.Append(',');
        AppendList(s, outputs, escape: false);
        s.Append(')');
    }

    private static void Separator(StringBuilder s, ref bool first)
    {
        if (!first)
        {
            s.Append(',');
        }

        first = false;
    }

    private static void AppendList(StringBuilder s, IEnumerable<string> items, bool escape)
    {
        s.Append('[');
        var first = true;
        foreach (var item in items)
        {
            Separator(s, ref first);
            if (escape)
            {
                AppendString(s, item);
            }
            else
            {
                AppendRaw(s, item);
            }
        }

        s.Append(']');
    }

    // Nix's printUnquotedString: quotes around the text as it is.
    private static void AppendRaw(StringBuilder s, string value) => s.Append('"').Append(value).Append('"');

    private static void AppendString(StringBuilder s, string value)
    {
        s.Append('"');
        foreach (var c in value)
        {
            switch (c)
            {
                case '"': s.Append("\\\""); break;
                case '\\': s.Append("\\\\"); break;
                case '\n': s.Append("\\n"); break;
                case '\r': s.Append("\\r"); break;
                case '\t': s.Append("\\t"); break;
                default: s.Append(c); break;
            }
        }

        s.Append('"');
    }

    private sealed class Parser(string text)
    {
        private int _pos;

        public Derivation ParseDerivation(string name)
        {
            if (text.StartsWith("DrvWithVersion(", StringComparison.Ordinal))
            {
                throw Fail("dynamic derivations (DrvWithVersion) are not supported");
            }

            Expect("Derive(");
            var derivation = new Derivation
            {
                Name = name,
                Platform = "",
                Builder = "",
            };

            // Outputs.
            Expect("[");
            while (!EndOfList())
            {
                Expect("(");
                var outputName = ReadString();
                Expect(",");
                var path = ReadString();
                Expect(",");
                var hashAlgo = ReadString();
                Expect(",");
                var hash = ReadString();
                Expect(")");
                if (path.Length > 0)
                {
                    CheckPath(path);
                }

                if (!derivation.Outputs.TryAdd(outputName, new DerivationOutput(path, hashAlgo, hash)))
                {
                    throw Fail($"duplicate output '{outputName}'");
                }
            }

            // Input derivations.
            Expect(",[");
            while (!EndOfList())
            {
                Expect("(");
                var path = CheckPath(ReadString());
                Expect(",");
                var outputs = new SortedSet<string>(Utf8Order.Comparer);
                foreach (var output in ReadStringList())
                {
                    outputs.Add(output);
                }

                Expect(")");
                if (!derivation.InputDerivations.TryAdd(path, outputs))
                {
                    throw Fail($"duplicate input derivation '{path}'");
                }
            }

            Expect(",");
            foreach (var source in ReadStringList())
            {
                if (!derivation.InputSources.Add(CheckPath(source)))
                {
                    throw Fail($"duplicate input source '{source}'");
                }
            }

            Expect(",");
            var platform = ReadString();
            Expect(",");
            var builder = ReadString();
            Expect(",");
            var arguments = ReadStringList();

            Expect(",[");
            while (!EndOfList())
            {
                Expect("(");
                var key = ReadString();
                Expect(",");
                var value = ReadString();
                Expect(")");
                if (!derivation.Environment.TryAdd(key, value))
                {
                    throw Fail($"duplicate environment variable '{key}'");
                }
            }

            Expect(")");
            if (_pos != text.Length)
            {
                throw Fail("trailing data after the derivation");
            }

            return new Derivation
            {
                Name = name,
                Outputs = derivation.Outputs,
                InputDerivations = derivation.InputDerivations,
                InputSources = derivation.InputSources,
                Platform = platform,
                Builder = builder,
                Arguments = arguments,
                Environment = derivation.Environment,
            };
        }

        private StorePath CheckPath(string path)
        {
            if (!StorePath.TryParse(path, out var storePath, out var error))
            {
                throw Fail($"bad path '{path}' in derivation: {error}");
            }

            return storePath;
        }

        private List<string> ReadStringList()
        {
            Expect("[");
            var items = new List<string>();
            while (!EndOfList())
            {
                items.Add(ReadString());
            }

            return items;
        }

        // Nix's endOfList: "]" ends the list; otherwise items after the first are preceded by ",".
        private bool EndOfList()
        {
            if (_pos < text.Length && text[_pos] == ']')
            {
                _pos++;
                return true;
            }

            if (_pos > 0 && text[_pos - 1] != '[')
            {
                Expect(",");
            }

            return false;
        }

        private string ReadString()
        {
            Expect("\"");
            var start = _pos;
            StringBuilder? builder = null;
            while (true)
            {
                if (_pos >= text.Length)
                {
                    throw Fail("unterminated string");
                }

                var c = text[_pos];
                if (c == '"')
                {
                    var result = builder is null ? text[start.._pos] : builder.Append(text, start, _pos - start).ToString();
                    _pos++;
                    return result;
                }

                if (c == '\\')
                {
                    builder ??= new StringBuilder();
                    builder.Append(text, start, _pos - start);
                    if (++_pos >= text.Length)
                    {
                        throw Fail("unterminated string");
                    }

                    builder.Append(text[_pos] switch
                    {
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        var other => other,
                    });
                    start = ++_pos;
                    continue;
                }

                _pos++;
            }
        }

        private void Expect(string expected)
        {
            if (string.CompareOrdinal(text, _pos, expected, 0, expected.Length) != 0)
            {
                var found = _pos < text.Length ? text.Substring(_pos, Math.Min(10, text.Length - _pos)) : "end of file";
                throw Fail($"expected string '{expected}', got '{found}'");
            }

            _pos += expected.Length;
        }

        private DerivationFormatException Fail(string message) =>
            new($"error parsing derivation at offset {_pos}: {message}");
    }
}
