using Kiln.Protocol;

namespace Kiln.Store;

/// <summary>
/// Who may touch what in the data directory. Kiln's own material — blobs, kept NAR files, build logs, scratch files,
/// keys, the database (0600, see the SQLite store), the socket account's unpacked tree (read by the socket's clients,
/// who are Kiln's user: the socket is 0600) — is Kiln's alone (0700 directories, 0400 blobs). The data
/// directory itself is 0711: build users must pass through it to their build directories and inputs (those are the
/// build group's, see the agent) and the login user to the bridge socket, but nobody may list it. Checked and set on every
/// start; a data directory others can write to is refused (anyone could swap Kiln's files).
/// </summary>
internal static class DataDirectoryModes
{
    private const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
    private const UnixFileMode PassThrough = Private | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute;

    /// <summary>A committed blob: read by Kiln only, and never written again.</summary>
    public const UnixFileMode Blob = UnixFileMode.UserRead;

    public static void Apply(StoreOptions options)
    {
        var data = new DirectoryInfo(options.DataDirectory);
        if ((data.UnixFileMode & (UnixFileMode.GroupWrite | UnixFileMode.OtherWrite)) != 0)
        {
            throw new KilnException(ErrorKind.Forbidden,
                $"the data directory '{data.FullName}' is writable by others, who could replace Kiln's files: run 'chmod go-w {data.FullName}'");
        }

        data.UnixFileMode = PassThrough;
        foreach (var directory in new[] { options.BlobDirectory, options.BlobCacheDirectory, options.NarFilesDirectory, Path.Combine(options.DataDirectory, "logs"), options.TemporaryDirectory,
            Path.Combine(options.DataDirectory, "keys"), options.MaterialisedRoot })
        {
            Directory.CreateDirectory(directory);
            File.SetUnixFileMode(directory, Private);
        }
    }
}
