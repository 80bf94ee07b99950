using System.Buffers;
using System.Text;
using Kiln.Nix.Nar;

namespace Kiln.Nix.Tests.Support;

/// <summary>Records parser events as text lines (file contents joined), to compare parses of the same input.</summary>
public sealed class RecordingVisitor : INarVisitor
{
    private readonly List<string> _events = [];
    private ArrayBufferWriter<byte>? _contents;

    public IReadOnlyList<string> Events => _events;

    public void RegularFile(bool executable, long size, long contentsOffset)
    {
        _events.Add($"file exec={executable} size={size} offset={contentsOffset}");
        _contents = new ArrayBufferWriter<byte>();
    }

    public void Contents(ReadOnlySpan<byte> data) => _contents!.Write(data);

    public void EndRegularFile() => _events.Add("contents " + Convert.ToHexString(_contents!.WrittenSpan));

    public void Symlink(ReadOnlySpan<byte> target) => _events.Add("symlink " + Convert.ToHexString(target));

    public void Directory() => _events.Add("dir");

    public void Entry(ReadOnlySpan<byte> name) => _events.Add("entry " + Encoding.UTF8.GetString(name));

    public void EndEntry() => _events.Add("end-entry");

    public void EndDirectory() => _events.Add("end-dir");
}
