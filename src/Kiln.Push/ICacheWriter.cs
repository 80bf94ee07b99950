namespace Kiln.Push;

/// <summary>A push that did not succeed: the target refused, could not be reached, or is not allowed.</summary>
public sealed class PushException(string message, bool permanent = false, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>Trying again cannot help (a target the operator does not allow, an account without a signing key).</summary>
    public bool Permanent { get; } = permanent;
}

/// <summary>
/// A binary cache files are written to, by name relative to its root (<c>nix-cache-info</c>, <c>HASH.narinfo</c>,
/// <c>nar/FILEHASH.nar.xz</c>). A file appears whole or not at all, as far as the target allows (a directory's is a
/// rename; HTTP and S3 store a PUT's body whole).
/// </summary>
public interface ICacheWriter : IDisposable
{
    /// <summary>Whether the cache has the file.</summary>
    Task<bool> ExistsAsync(string file, CancellationToken cancellationToken);

    /// <summary>Writes the file (replacing one there): <paramref name="length"/> bytes from <paramref name="content"/>.</summary>
    Task PutAsync(string file, Stream content, long length, string contentType, CancellationToken cancellationToken);
}
