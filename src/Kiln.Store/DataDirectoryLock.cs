namespace Kiln.Store;

/// <summary>
/// An exclusive lock on a data directory (<c>kiln.lock</c>), held by <c>kiln serve</c> for its lifetime, so offline
/// maintenance (<c>kiln store gc</c>) cannot run under a live server and two servers cannot share one directory.
/// </summary>
public sealed class DataDirectoryLock : IDisposable
{
    private readonly FileStream _file;

    private DataDirectoryLock(FileStream file) => _file = file;

    /// <exception cref="IOException">Another process holds the lock.</exception>
    public static DataDirectoryLock Acquire(string dataDirectory, string holder)
    {
        Directory.CreateDirectory(dataDirectory);
        var path = Path.Combine(dataDirectory, "kiln.lock");
        try
        {
            // FileShare.None takes an exclusive advisory lock (flock) that other processes' opens respect.
            var file = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            file.SetLength(0);
            var text = System.Text.Encoding.UTF8.GetBytes($"{Environment.ProcessId} {holder}\n");
            file.Write(text);
            file.Flush();
            return new DataDirectoryLock(file);
        }
        catch (IOException)
        {
            throw new IOException($"the data directory '{dataDirectory}' is in use by another kiln process (is 'kiln serve' running?)");
        }
    }

    public void Dispose() => _file.Dispose();
}
