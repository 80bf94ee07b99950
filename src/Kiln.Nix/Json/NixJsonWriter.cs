using System.Globalization;

namespace Kiln.Nix.Json;

/// <summary>
/// Writes JSON exactly as Nix 2.8's <c>JSONWriter</c> (<c>src/libutil/json.cc</c>) does, so Kiln's diagnostic output
/// can be compared byte for byte with Nix's: with <c>indent</c>, every member starts on a new line indented two
/// spaces per level and keys are followed by <c>": "</c>; empty containers print as <c>{}</c> / <c>[]</c>; strings escape
/// <c>"</c>, <c>\</c>, newline, CR, tab and other control characters (<c>\u00XX</c>), and nothing else. Like Nix's, it
/// passes bytes through: encode the result with <see cref="NixString.Encode(string)"/> to get Nix's exact output.
/// </summary>
public sealed class NixJsonWriter(TextWriter output, bool indent)
{
    private readonly Stack<bool> _first = new();
    private bool _pendingValueAfterKey;

    /// <summary>Opens an object (as a value, a list element, or after <see cref="Key"/>).</summary>
    public void BeginObject()
    {
        BeforeValue();
        output.Write('{');
        _first.Push(true);
    }

    /// <summary>Closes the current object.</summary>
    public void EndObject() => Close('}');

    /// <summary>Opens a list.</summary>
    public void BeginArray()
    {
        BeforeValue();
        output.Write('[');
        _first.Push(true);
    }

    /// <summary>Closes the current list.</summary>
    public void EndArray() => Close(']');

    /// <summary>Starts an object member; its value must follow.</summary>
    public void Key(string name)
    {
        Comma();
        WriteString(output, name);
        output.Write(indent ? ": " : ":");
        _pendingValueAfterKey = true;
    }

    public void StringValue(string value)
    {
        BeforeValue();
        WriteString(output, value);
    }

    public void NumberValue(long value)
    {
        BeforeValue();
        output.Write(value.ToString(CultureInfo.InvariantCulture));
    }

    public void BooleanValue(bool value)
    {
        BeforeValue();
        output.Write(value ? "true" : "false");
    }

    /// <summary>A member with a string value.</summary>
    public void Member(string name, string value)
    {
        Key(name);
        StringValue(value);
    }

    private void BeforeValue()
    {
        if (_pendingValueAfterKey)
        {
            _pendingValueAfterKey = false;
            return;
        }

        if (_first.Count > 0)
        {
            Comma();
        }
    }

    private void Comma()
    {
        if (_first.Pop())
        {
            _first.Push(false);
        }
        else
        {
            _first.Push(false);
            output.Write(',');
        }

        if (indent)
        {
            NewLine(_first.Count);
        }
    }

    private void Close(char bracket)
    {
        var wasEmpty = _first.Pop();
        if (indent && !wasEmpty)
        {
            NewLine(_first.Count);
        }

        output.Write(bracket);
    }

    private void NewLine(int depth)
    {
        output.Write('\n');
        output.Write(new string(' ', depth * 2));
    }

    /// <summary>Writes a JSON string with Nix's escaping.</summary>
    public static void WriteString(TextWriter output, string value)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(value);
        output.Write('"');
        foreach (var c in value)
        {
            switch (c)
            {
                case '"': output.Write("\\\""); break;
                case '\\': output.Write("\\\\"); break;
                case '\n': output.Write("\\n"); break;
                case '\r': output.Write("\\r"); break;
                case '\t': output.Write("\\t"); break;
                case < ' ': output.Write(string.Create(CultureInfo.InvariantCulture, $"\\u{(int)c:x4}")); break;
                default: output.Write(c); break;
            }
        }

        output.Write('"');
    }

    /// <summary>Renders a JSON string literal.</summary>
    public static string Quote(string value)
    {
        var writer = new StringWriter(CultureInfo.InvariantCulture);
        WriteString(writer, value);
        return writer.ToString();
    }


}
