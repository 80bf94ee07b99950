namespace Kiln.Push;

/// <summary>A <c>file://</c> binary cache: a directory on the server's machine (under a root the operator allows).</summary>
internal sealed class FileCacheWriter(string directory) : ICacheWriter
{
    public Task<bool> ExistsAsync(string file, CancellationToken cancellationToken) => Task.FromResult(File.Exists(Path.Combine(directory, file)));

    public async Task PutAsync(string file, Stream content, long length, string contentType, CancellationToken cancellationToken)
    {
        var path = Path.Combine(directory, file);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        // Written beside it and renamed: a reader (nix copy --from file://…) never sees half a file.
        var temporary = $"{path}.{Guid.NewGuid():N}.part";
        try
        {
            var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
            await using (stream.ConfigureAwait(false))
            {
                await content.CopyToAsync(stream, cancellationToken).ConfigureAwait(false);
                if (stream.Length != length)
                {
                    throw new PushException($"'{file}' came out as {stream.Length} bytes, not {length}");
                }
            }

            File.Move(temporary, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            File.Delete(temporary);
            throw new PushException($"cannot write '{file}' into the push-to directory: {e.Message}", inner: e);
        }
        catch
        {
            File.Delete(temporary);
            throw;
        }
    }

    public void Dispose()
    {
    }
}
