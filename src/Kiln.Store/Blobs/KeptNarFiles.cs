using Kiln.Nix.Hashing;

namespace Kiln.Store.Blobs;

/// <summary>
/// Compressed NARs kept as HTTP clients uploaded them (<c>&lt;nix32 file hash&gt;.nar.xz</c> and the like), because
/// the uploader's own narinfo cache names them and it asks for them by that name. A file is kept only under the name
/// its contents hash to, so no upload can replace another's; it goes when the collector removes its NAR's blob. With
/// several front doors on one bucket, each kept file is also put there (<see cref="ISharedFiles"/>, <c>nar-files/</c>):
/// a client whose narinfo cache names a file it uploaded through one front door gets it from any other.
/// </summary>
internal sealed class KeptNarFiles
{
    private readonly string _directory;
    private readonly ISharedFiles? _shared;

    public KeptNarFiles(string directory, ISharedFiles? shared)
    {
        _directory = directory;
        _shared = shared;
        Directory.CreateDirectory(directory);
    }

    internal static string SharedName(string name) => "nar-files/" + name;

    // The file hash a kept file's name starts with (52 Nix32 digits before the first dot).
    internal static NixHash? HashOf(string name)
    {
        var dot = name.IndexOf('.', StringComparison.Ordinal);
        var digest = new byte[32];
        return dot == Nix32.EncodedLength(32) && name.IndexOfAny(['/', '\0']) < 0 && Nix32.TryDecode(name.AsSpan(0, dot), digest)
            ? new NixHash(NixHashAlgorithm.Sha256, digest)
            : null;
    }

    public async ValueTask<BlobSource?> OpenAsync(string name, CancellationToken cancellationToken)
    {
        if (HashOf(name) is not { } hash)
        {
            return null;
        }

        if (Open(hash, name) is { } kept)
        {
            return kept;
        }

        if (_shared is null)
        {
            return null;
        }

        // Kept by another front door: fetched once (into a file of its own, renamed into place) and kept here too.
        var temp = Path.Combine(_directory, $".tmp-{Guid.NewGuid():N}");
        try
        {
            if (!await _shared.GetFileAsync(SharedName(name), temp, cancellationToken).ConfigureAwait(false))
            {
                return null;
            }

            // Kept only as what its name says, as when it was uploaded here: the bucket's copy may be damaged.
            var file = File.OpenRead(temp);
            await using (file.ConfigureAwait(false))
            {
                NixHash actual;
                var hashing = new HashingStream(NixHashAlgorithm.Sha256);
                await using (hashing.ConfigureAwait(false))
                {
                    await file.CopyToAsync(hashing, 256 * 1024, cancellationToken).ConfigureAwait(false);
                    actual = hashing.Finish();
                }

                if (actual != hash)
                {
                    throw new IOException($"the blob store's copy of the kept file {name} is not what its name says") { HResult = 5 };
                }
            }

            MoveIntoPlace(temp, Path.Combine(_directory, name));
        }
        finally
        {
            File.Delete(temp);
        }

        return Open(hash, name);
    }

    private BlobSource? Open(NixHash hash, string name)
    {
        try
        {
            var file = new FileStream(Path.Combine(_directory, name), FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, 0,
                FileOptions.Asynchronous | FileOptions.SequentialScan);
            return BlobSource.FromFile(hash, file);
        }
        catch (FileNotFoundException)
        {
            return null;
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
        if (Touch(target))
        {
            await ShareAsync(name, target, cancellationToken).ConfigureAwait(false);
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

            MoveIntoPlace(temp, target);
        }
        finally
        {
            File.Delete(temp);
        }

        await ShareAsync(name, target, cancellationToken).ConfigureAwait(false);
        return true;
    }

    // Whether the file is here; if so it is kept afresh, so the prune below gives it its grace period to be named again.
    private static bool Touch(string file)
    {
        try
        {
            File.SetLastWriteTimeUtc(file, DateTime.UtcNow);
            return true;
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return false; // (or deleted a moment ago): written anew
        }
        catch (UnauthorizedAccessException)
        {
            return File.Exists(file); // not ours to touch (another user's copy): kept as it is
        }
    }

    // A file whose contents were checked against its name, made read-only and renamed into place: a reader sees all of
    // it or nothing. Already there (kept by a concurrent upload or fetch of the same name) is the same content.
    private static void MoveIntoPlace(string temp, string target)
    {
        File.SetUnixFileMode(temp, UnixFileMode.UserRead);
        try
        {
            File.Move(temp, target, overwrite: false);
        }
        catch (IOException) when (File.Exists(target))
        {
        }
    }

    // Put for the other front doors every time it is kept: an earlier put may have failed, and it costs one upload of
    // a file the client has just sent anyway.
    private async Task ShareAsync(string name, string file, CancellationToken cancellationToken)
    {
        if (_shared is not null)
        {
            await _shared.PutFileAsync(SharedName(name), file, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Deletes the files here the metadata no longer names, and partial files an interrupted keep or fetch left, once
    /// they are older than <paramref name="grace"/> (a file is kept just before it is named). With several front doors
    /// these are the copies one fetched or kept after another's collector removed the rest. Returns how many went.
    /// </summary>
    public async Task<int> PruneAsync(Func<IReadOnlyCollection<string>, CancellationToken, Task<IReadOnlySet<string>>> named, TimeSpan grace,
        CancellationToken cancellationToken)
    {
        var before = DateTime.UtcNow - grace;
        var removed = 0;
        var candidates = new List<string>();
        foreach (var file in new DirectoryInfo(_directory).EnumerateFiles("*", new EnumerationOptions { IgnoreInaccessible = true }))
        {
            if (file.LastWriteTimeUtc > before)
            {
                continue;
            }

            if (file.Name.StartsWith(".tmp-", StringComparison.Ordinal))
            {
                file.Delete();
                removed++;
            }
            else if (HashOf(file.Name) is not null)
            {
                candidates.Add(file.Name);
            }
        }

        foreach (var batch in candidates.Chunk(1000))
        {
            var kept = await named(batch, cancellationToken).ConfigureAwait(false);
            foreach (var name in batch.Where(n => !kept.Contains(n)))
            {
                // Looked at again: kept afresh since the listing (and about to be named), it stays.
                var file = new FileInfo(Path.Combine(_directory, name));
                if (file.Exists && file.LastWriteTimeUtc <= before)
                {
                    file.Delete();
                    removed++;
                }
            }
        }

        return removed;
    }

    public async Task DeleteAsync(string name, CancellationToken cancellationToken)
    {
        if (HashOf(name) is not null)
        {
            File.Delete(Path.Combine(_directory, name));
            if (_shared is not null)
            {
                await _shared.DeleteFileAsync(SharedName(name), cancellationToken).ConfigureAwait(false);
            }
        }
    }
}
