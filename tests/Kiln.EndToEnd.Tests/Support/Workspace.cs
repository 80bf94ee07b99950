using Kiln.Nix.Tests.Support;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// A test's directory inside a client chroot. It reads as the path the client sees (in interpolations and wherever a
/// string is wanted), and its tree on the host is removed on dispose.
/// </summary>
public sealed class Workspace(string inside, string onHost) : IDisposable
{
    /// <summary>The path as the client in the chroot sees it.</summary>
    public string Inside { get; } = inside;

    public static implicit operator string(Workspace workspace) => workspace?.Inside ?? throw new ArgumentNullException(nameof(workspace));

    public override string ToString() => Inside;

    public void Dispose() => TempDir.Remove(onHost);
}
