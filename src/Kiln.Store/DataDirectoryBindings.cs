namespace Kiln.Store;

/// <summary>
/// What a data directory is bound to, kept in small files in it (<c>DATA/database</c>, <c>DATA/blob-store</c>) so every
/// command given <c>--data</c> reaches the same backends as the server without being told again. Readable by Kiln's
/// user alone: a database binding holds its password.
/// </summary>
public static class DataDirectoryBindings
{
    /// <summary>The binding's text, or null when the directory has none.</summary>
    public static string? Read(string dataDirectory, string name)
    {
        var file = Path.Combine(Path.GetFullPath(dataDirectory), name);
        return File.Exists(file) ? File.ReadAllText(file).Trim() : null;
    }

    /// <summary>Writes the binding whole (a reader sees the old text or the new, never part of one), mode 0600.</summary>
    public static void Write(string dataDirectory, string name, string text) =>
        WritePrivateFile(Path.Combine(Path.GetFullPath(dataDirectory), name), text.TrimEnd('\n') + "\n");

    /// <summary>Writes a file readable by Kiln alone, beside and renamed: a reader never sees half of it.</summary>
    public static void WritePrivateFile(string file, string text)
    {
        var temporary = file + ".tmp";
        File.Delete(temporary);
        using (var stream = new FileStream(temporary, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        }))
        {
            stream.Write(System.Text.Encoding.UTF8.GetBytes(text));
        }

        File.Move(temporary, file, overwrite: true);
    }
}
