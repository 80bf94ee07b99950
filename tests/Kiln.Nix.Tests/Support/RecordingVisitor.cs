using System.Security.Cryptography;
using System.Text;
using Kiln.Nix.Nar;

namespace Kiln.Nix.Tests.Support;

/// <summary>Records parser events as text lines (file contents by their hash), to compare parses of the same input.</summary>
public sealed class RecordingVisitor : INarVisitor, IDisposable
{
    private readonly List<string> _events = [];
    private IncrementalHash? _contents;

    public IReadOnlyList<string> Events => _events;

    public void RegularFile(bool executable, long size, long contentsOffset)
    {
        _events.Add($"file exec={executable} size={size} offset={contentsOffset}");
        _contents = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    }

    public void Contents(ReadOnlySpan<byte> data) => _contents!.AppendData(data);

    public void EndRegularFile()
    {
        _events.Add("contents " + Convert.ToHexString(_contents!.GetHashAndReset()));
        _contents.Dispose();
    }

    public void Symlink(ReadOnlySpan<byte> target) => _events.Add("symlink " + Convert.ToHexString(target));

    public void Directory() => _events.Add("dir");

    public void Entry(ReadOnlySpan<byte> name) => _events.Add("entry " + Encoding.UTF8.GetString(name));

    public void EndEntry() => _events.Add("end-entry");

    public void EndDirectory() => _events.Add("end-dir");

    public void Dispose() => _contents?.Dispose();
}
