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

    /// <summary>Removes a directory tree a test made, read-only directories (unpacked store paths) included.</summary>
    public static void Remove(string path)
    {
        if (!Directory.Exists(path))
        {
            return;
        }

        try
        {
            MakeWritable(new DirectoryInfo(path));
            Directory.Delete(path, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            // .NET cannot name files whose names are not UTF-8 (the NAR tests make some) nor reach past PATH_MAX: rm can.
            Processes.Run("rm", ["-rf", "--one-file-system", path]);
        }
    }

    private static void MakeWritable(DirectoryInfo dir)
    {
        if (dir.LinkTarget is not null)
        {
            return;
        }

        dir.UnixFileMode |= UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        foreach (var sub in dir.EnumerateDirectories())
        {
            MakeWritable(sub);
        }
    }
}
