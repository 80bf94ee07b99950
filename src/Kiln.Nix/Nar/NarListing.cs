using Kiln.Nix.Json;

namespace Kiln.Nix.Nar;

/// <summary>
/// Produces the JSON listing of a NAR while it is parsed, in the shape Nix writes (Nix's <c>listNar</c> in
/// <c>src/libstore/nar-accessor.cc</c>): <c>{"type":"regular","size":N[,"executable":true],"narOffset":N}</c>,
/// <c>{"type":"symlink","target":"…"}</c>, <c>{"type":"directory","entries":{name: node, …}}</c>. <c>narOffset</c> is where
/// the file's contents start in the archive, so a client can fetch one file with a range request.
/// Use <see cref="WriteBinaryCacheListing"/> for a binary cache's <c>.ls</c> file (<c>{"version":1,"root":…}</c>, compact)
/// and <see cref="WriteListing"/> for what <c>nix nar ls --json -R</c> prints.
/// </summary>
public sealed class NarListing : INarVisitor
{
    private readonly NixJsonWriter _json;

    private NarListing(NixJsonWriter json) => _json = json;

    /// <summary>Parses <paramref name="nar"/> and writes its listing (root node only) to <paramref name="output"/>.</summary>
    public static void WriteListing(Stream nar, TextWriter output, bool indent, NarLimits? limits = null)
    {
        var json = new NixJsonWriter(output, indent);
        NarReading.Parse(nar, new NarListing(json), limits);
    }

    /// <summary>Parses <paramref name="nar"/> and writes a binary cache <c>.ls</c> document: <c>{"version":1,"root":…}</c>.</summary>
    public static void WriteBinaryCacheListing(Stream nar, TextWriter output, NarLimits? limits = null)
    {
        var json = new NixJsonWriter(output, indent: false);
        json.BeginObject();
        json.Key("version");
        json.NumberValue(1);
        json.Key("root");
        NarReading.Parse(nar, new NarListing(json), limits);
        json.EndObject();
    }

    public void RegularFile(bool executable, long size, long contentsOffset)
    {
        _json.BeginObject();
        _json.Member("type", "regular");
        _json.Key("size");
        _json.NumberValue(size);
        if (executable)
        {
            _json.Key("executable");
            _json.BooleanValue(true);
        }

        _json.Key("narOffset");
        _json.NumberValue(contentsOffset);
        _json.EndObject();
    }

    public void Contents(ReadOnlySpan<byte> data) { }

    public void EndRegularFile() { }

    public void Symlink(ReadOnlySpan<byte> target)
    {
        _json.BeginObject();
        _json.Member("type", "symlink");
        _json.Member("target", NixString.Decode(target));
        _json.EndObject();
    }

    public void Directory()
    {
        _json.BeginObject();
        _json.Member("type", "directory");
        _json.Key("entries");
        _json.BeginObject();
    }

    public void Entry(ReadOnlySpan<byte> name) => _json.Key(NixString.Decode(name));

    public void EndEntry() { }

    public void EndDirectory()
    {
        _json.EndObject();
        _json.EndObject();
    }
}
