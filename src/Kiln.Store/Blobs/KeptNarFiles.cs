using Kiln.Nix.Hashing;

namespace Kiln.Store.Blobs;

/// <summary>
/// Compressed NARs kept as HTTP clients uploaded them (<c>&lt;nix32 file hash&gt;.nar.xz</c> and the like), because
/// the uploader's own narinfo cache names them and it asks for them by that name. A file is kept only under the name
/// its contents hash to, so no upload can replace another's; it goes when the collector removes its NAR's blob.
/// </summary>
internal sealed class KeptNarFiles
{
    private readonly string _directory;

    public KeptNarFiles(string directory)
    {
        _directory = directory;
        Directory.CreateDirectory(directory);
    }

    // The file hash a kept file's name starts with (52 Nix32 digits before the first dot).
    private static NixHash? HashOf(string name)
    {
        var dot = name.IndexOf('.', StringComparison.Ordinal);
        var digest = new byte[32];
        return dot == Nix32.EncodedLength(32) && name.IndexOfAny(['/', '\0']) < 0 && Nix32.TryDecode(name.AsSpan(0, dot), digest)
            ? new NixHash(NixHashAlgorithm.Sha256, digest)
            : null;
    }

    public ValueTask<BlobSource?> OpenAsync(string name)
    {
        if (HashOf(name) is not { } hash)
        {
            return ValueTask.FromResult<BlobSource?>(null);
        }

        try
        {
            var file = new FileStream(Path.Combine(_directory, name), FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 0,
                FileOptions.Asynchronous | FileOptions.SequentialScan);
            return ValueTask.FromResult<BlobSource?>(BlobSource.FromFile(hash, file));
        }
        catch (FileNotFoundException)
        {
            return ValueTask.FromResult<BlobSource?>(null);
        }
    }

    /// <summary>Keeps <paramref name="content"/> under <paramref name="name"/>; false (nothing kept) when its SHA-256 is not the one the name says.</summary>
    public async Task<bool> KeepAsync(string name, Stream content, CancellationToken cancellationToken)
    {
        if (HashOf(name) is not { } expected)
        {
            return false;
        }

        var target = Path.Combine(_directory, name);
        if (File.Exists(target))
        {
            return true; // the same name is the same content
        }

        var temp = Path.Combine(_directory, $".tmp-{Guid.NewGuid():N}");
        try
        {
            NixHash actual;
            var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 0);
            await using (file.ConfigureAwait(false))
            {
                var hashing = new HashingStream(NixHashAlgorithm.Sha256, file);
                await using (hashing.ConfigureAwait(false))
                {
                    await content.CopyToAsync(hashing, 256 * 1024, cancellationToken).ConfigureAwait(false);
                    actual = hashing.Finish();
                }
            }

            if (actual != expected)
            {
                return false;
            }

            File.SetUnixFileMode(temp, UnixFileMode.UserRead);
            File.Move(temp, target, overwrite: false);
            return true;
        }
        catch (IOException) when (File.Exists(target))
        {
            return true; // kept by a concurrent upload of the same file
        }
        finally
        {
            File.Delete(temp);
        }
    }

    public void Delete(string name)
    {
        if (HashOf(name) is not null)
        {
            File.Delete(Path.Combine(_directory, name));
        }
    }
}
