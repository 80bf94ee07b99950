using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Kiln.Nix.Derivations;

namespace Kiln.Agent;

/// <summary>
/// A derivation's structured attributes (<c>__json</c>) and the two files Nix gives its builder from them:
/// <c>.attrs.json</c> (compact, keys sorted, with <c>outputs</c> and any <c>exportReferencesGraph</c> results added)
/// and <c>.attrs.sh</c> (bash declarations of the top-level values that are simple enough, with Nix's quoting and
/// its quirks: integers are cast to 32 bits, non-integral numbers and nested values are left out).
/// </summary>
internal sealed class StructuredAttributes
{
    private readonly JsonObject _attributes;
    private readonly string _drvName;

    private StructuredAttributes(JsonObject attributes, string drvName)
    {
        _attributes = attributes;
        _drvName = drvName;
    }

    public static StructuredAttributes Parse(Derivation derivation)
    {
        try
        {
            return JsonNode.Parse(derivation.Environment["__json"]) is JsonObject attributes
                ? new StructuredAttributes(attributes, derivation.Name)
                : throw new BuildSetupException($"the structured attributes of derivation '{derivation.Name}' are not a JSON object");
        }
        catch (JsonException e)
        {
            throw new BuildSetupException($"the structured attributes of derivation '{derivation.Name}' are not valid JSON: {e.Message}");
        }
    }

    /// <summary>A list-of-strings attribute, or null when absent.</summary>
    public IReadOnlyList<string>? GetStrings(string name) => GetStrings(_attributes, name, _drvName);

    public static IReadOnlyList<string>? GetStrings(JsonObject owner, string name, string drvName)
    {
        if (!owner.TryGetPropertyValue(name, out var node) || node is null)
        {
            return null;
        }

        return node is JsonArray array && array.All(e => e?.GetValueKind() == JsonValueKind.String)
            ? array.Select(e => e!.GetValue<string>()).ToList()
            : throw new BuildSetupException($"attribute '{name}' of derivation '{drvName}' must be a list of strings");
    }

    public JsonObject? GetObject(string name) => _attributes.TryGetPropertyValue(name, out var node) ? node as JsonObject : null;

    /// <summary>The <c>exportReferencesGraph</c> object: attribute name → store paths.</summary>
    public IEnumerable<(string Name, IReadOnlyList<string> Paths)> ExportReferencesGraph()
    {
        if (GetObject("exportReferencesGraph") is not { } graphs)
        {
            yield break;
        }

        foreach (var (name, value) in graphs)
        {
            IReadOnlyList<string> paths = value switch
            {
                JsonArray array => array.Select(e => e?.GetValueKind() == JsonValueKind.String ? e.GetValue<string>() : "").ToList(),
                JsonValue single when single.GetValueKind() == JsonValueKind.String => [single.GetValue<string>()],
                _ => [],
            };
            yield return (name, paths);
        }
    }

    /// <summary>The attributes as the builder sees them: with <c>outputs</c> and the exported reference graphs.</summary>
    private SortedDictionary<string, JsonNode?> Augmented(Derivation derivation, IReadOnlyList<(string Name, IReadOnlyList<BuildInput> Paths)> graphs)
    {
        var result = new SortedDictionary<string, JsonNode?>(Utf8Order.Comparer);
        foreach (var (name, value) in _attributes)
        {
            result[name] = value;
        }

        var outputs = new JsonObject();
        foreach (var (name, output) in derivation.Outputs)
        {
            outputs[name] = output.Path;
        }

        result["outputs"] = outputs;
        foreach (var (name, paths) in graphs)
        {
            var byPath = paths.ToDictionary(p => p.Path);
            var infos = new JsonArray();
            foreach (var input in paths)
            {
                infos.Add(new JsonObject
                {
                    ["closureSize"] = ClosureSize(input, byPath),
                    ["narHash"] = "sha256:" + input.NarHash.ToNix32(),
                    ["narSize"] = input.NarSize,
                    ["path"] = input.Path.FullPath,
                    ["references"] = new JsonArray(input.References.Order().Select(r => (JsonNode)r.FullPath).ToArray()),
                });
            }

            result[name] = infos;
        }

        return result;
    }

    private static long ClosureSize(BuildInput input, Dictionary<Kiln.Nix.StorePaths.StorePath, BuildInput> paths) =>
        StorePathGraph.Closure(input.Path, p => paths.TryGetValue(p, out var known) ? known.References : null)
            .Sum(p => paths.TryGetValue(p, out var known) ? known.NarSize : 0);

    public string ToJson(Derivation derivation, IReadOnlyList<(string Name, IReadOnlyList<BuildInput> Paths)> graphs)
    {
        var text = new StringBuilder();
        text.Append('{');
        var first = true;
        foreach (var (name, value) in Augmented(derivation, graphs))
        {
            text.Append(first ? "" : ",");
            first = false;
            WriteString(text, name);
            text.Append(':');
            WriteValue(text, value);
        }

        return text.Append('}').ToString();
    }

    public string ToShell(Derivation derivation)
    {
        var text = new StringBuilder();
        foreach (var (name, value) in Augmented(derivation, []))
        {
            if (!IsShellName(name))
            {
                continue;
            }

            if (Simple(value) is { } simple)
            {
                text.Append("declare ").Append(name).Append('=').Append(simple).Append('\n');
            }
            else if (value is JsonArray array && array.Select(Simple).ToList() is var items && items.All(i => i is not null))
            {
                text.Append("declare -a ").Append(name).Append("=(");
                foreach (var item in items)
                {
                    text.Append(item).Append(' ');
                }

                text.Append(")\n");
            }
            else if (value is JsonObject obj && obj.Select(p => (p.Key, Value: Simple(p.Value))).ToList() is var members && members.All(m => m.Value is not null))
            {
                text.Append("declare -A ").Append(name).Append("=(");
                foreach (var (key, member) in members.OrderBy(m => m.Key, Utf8Order.Comparer))
                {
                    text.Append('[').Append(ShellEscape(key)).Append("]=").Append(member).Append(' ');
                }

                text.Append(")\n");
            }
        }

        return text.ToString();
    }

    private static bool IsShellName(string name) =>
        name.Length > 0 && (char.IsAsciiLetter(name[0]) || name[0] == '_') && name.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    // A value .attrs.sh can hold, rendered; null when it is left out.
    private static string? Simple(JsonNode? value)
    {
        switch (value?.GetValueKind())
        {
            case null:
            case JsonValueKind.Null:
                return "''";
            case JsonValueKind.True:
                return "1";
            case JsonValueKind.False:
                return "";
            case JsonValueKind.String:
                return ShellEscape(value.GetValue<string>());
            case JsonValueKind.Number:
                var element = value.GetValue<JsonElement>();
                if (element.TryGetInt64(out var integer))
                {
                    return unchecked((int)integer).ToString(CultureInfo.InvariantCulture);
                }

                // Nix tests integrality in single precision, then converts to int as x86 does (INT_MIN when out of range).
                var single = (float)element.GetDouble();
                if (MathF.Ceiling(single) != single)
                {
                    return null;
                }

                return (single is >= int.MinValue and < 2147483648f ? (int)single : int.MinValue).ToString(CultureInfo.InvariantCulture);
            default:
                return null;
        }
    }

    private static string ShellEscape(string value) => "'" + value.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    private static void WriteValue(StringBuilder text, JsonNode? value)
    {
        switch (value)
        {
            case null:
                text.Append("null");
                break;
            case JsonObject obj:
                text.Append('{');
                var first = true;
                foreach (var (key, member) in obj.OrderBy(p => p.Key, Utf8Order.Comparer))
                {
                    text.Append(first ? "" : ",");
                    first = false;
                    WriteString(text, key);
                    text.Append(':');
                    WriteValue(text, member);
                }

                text.Append('}');
                break;
            case JsonArray array:
                text.Append('[');
                for (var i = 0; i < array.Count; i++)
                {
                    text.Append(i == 0 ? "" : ",");
                    WriteValue(text, array[i]);
                }

                text.Append(']');
                break;
            default:
                switch (value.GetValueKind())
                {
                    case JsonValueKind.String:
                        WriteString(text, value.GetValue<string>());
                        break;
                    default:
                        text.Append(value.ToJsonString());
                        break;
                }

                break;
        }
    }

    // nlohmann::json's escaping: quote, backslash and the named control characters; other control characters as
    // \u00xx; everything else as it is.
    private static void WriteString(StringBuilder text, string value)
    {
        text.Append('"');
        foreach (var c in value)
        {
            switch (c)
            {
                case '"': text.Append("\\\""); break;
                case '\\': text.Append("\\\\"); break;
                case '\b': text.Append("\\b"); break;
                case '\f': text.Append("\\f"); break;
                case '\n': text.Append("\\n"); break;
                case '\r': text.Append("\\r"); break;
                case '\t': text.Append("\\t"); break;
                case < ' ': text.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture)); break;
                default: text.Append(c); break;
            }
        }

        text.Append('"');
    }
}
