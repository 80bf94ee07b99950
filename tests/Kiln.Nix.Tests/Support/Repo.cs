namespace Kiln.Nix.Tests.Support;

/// <summary>Locates files checked into the repository (golden data lives beside the test sources, not in bin/).</summary>
public static class Repo
{
    public static string Root { get; } = FindRoot();

    public static string Golden(params string[] parts) =>
        Path.Combine([Root, "tests", "Kiln.Nix.Tests", "Golden", .. parts]);

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Kiln.sln")))
            {
                return dir.FullName;
            }
        }

        throw new InvalidOperationException("cannot find the repository root (Kiln.sln) above " + AppContext.BaseDirectory);
    }
}

/// <summary>A temporary directory removed on dispose.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = Directory.CreateTempSubdirectory("kiln-test-").FullName;
        // Searchable by others, as a data directory must be for Kiln's build users to reach their build directories.
        File.SetUnixFileMode(Path, (UnixFileMode)Convert.ToInt32("755", 8));
    }

    public string Path { get; }

    public string this[string relative] => System.IO.Path.Combine(Path, relative);

    public void Dispose() => Remove(Path);

    /// <summary>Removes a directory tree a test made, read-only directories (unpacked store paths) and names .NET cannot hold included.</summary>
    public static void Remove(string path)
    {
        try
        {
            Kiln.Nix.Nar.NarExtractor.DeleteTree(path);
        }
        catch (IOException)
        {
            // What cannot go (a mount still inside) stays, and the leftover check of the run shows it.
        }
    }
}
