namespace Kiln.Nix.Nar;

/// <summary>
/// Receives the file system objects of a NAR as <see cref="NarParser"/> validates them, in archive order.
/// Spans are only valid during the call. Every object is announced before its contents: a regular file
/// as <see cref="RegularFile"/>, zero or more <see cref="Contents"/> chunks and <see cref="EndRegularFile"/>;
/// a directory as <see cref="Directory"/>, entries (<see cref="Entry"/> … child … <see cref="EndEntry"/>)
/// and <see cref="EndDirectory"/>; a symlink as one <see cref="Symlink"/> call.
/// </summary>
public interface INarVisitor
{
    /// <summary>A regular file of <paramref name="size"/> bytes whose contents start at <paramref name="contentsOffset"/> in the NAR.</summary>
    void RegularFile(bool executable, long size, long contentsOffset);

    /// <summary>The next chunk of the current file's contents.</summary>
    void Contents(ReadOnlySpan<byte> data);

    /// <summary>The current file's contents are complete.</summary>
    void EndRegularFile();

    /// <summary>A symlink.</summary>
    void Symlink(ReadOnlySpan<byte> target);

    /// <summary>A directory begins.</summary>
    void Directory();

    /// <summary>An entry of the current directory; its node follows.</summary>
    void Entry(ReadOnlySpan<byte> name);

    /// <summary>The current entry's node is complete.</summary>
    void EndEntry();

    /// <summary>The current directory is complete.</summary>
    void EndDirectory();
}

/// <summary>A visitor that ignores everything (validation only); derive from it to handle a few events.</summary>
public class NarVisitor : INarVisitor
{
    public virtual void RegularFile(bool executable, long size, long contentsOffset) { }

    public virtual void Contents(ReadOnlySpan<byte> data) { }

    public virtual void EndRegularFile() { }

    public virtual void Symlink(ReadOnlySpan<byte> target) { }

    public virtual void Directory() { }

    public virtual void Entry(ReadOnlySpan<byte> name) { }

    public virtual void EndEntry() { }

    public virtual void EndDirectory() { }
}
