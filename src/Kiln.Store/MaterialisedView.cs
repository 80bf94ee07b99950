using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.StorePaths;
using Kiln.Store.Blobs;

namespace Kiln.Store;

/// <summary>
/// One account's view unpacked as a real store tree: <c>ROOT/nix/store/&lt;hash&gt;-&lt;name&gt;</c>, canonical as Nix keeps
/// its store (read-only, modification time 1). Nix's <c>unix://</c> store reads path contents from the file system
/// rather than asking the daemon (for <c>nix copy --from</c>, substitution, <c>nix store verify</c>, reading .drv
/// files), so the unix socket's account needs its paths on disk, where clients find them with
/// <c>unix://…/daemon.sock?root=ROOT</c>. Each path is unpacked under a temporary name and renamed into place, so a
/// client never sees half a path; a path leaves the tree when it leaves the view.
/// </summary>
public sealed class MaterialisedView(string root, IBlobStore blobs)
{
    private const string TemporaryPrefix = ".kiln-tmp-";

    /// <summary>The root to give clients (<c>?root=</c>).</summary>
    public string Root { get; } = root;

    /// <summary>Where store paths are unpacked.</summary>
    public string StoreDirectory { get; } = Path.Combine(root, "nix", "store");

    public string PathOf(StorePath path) => Path.Combine(StoreDirectory, path.BaseName);

    /// <summary>Whether the tree has the path (a stat).</summary>
    public bool Contains(StorePath path)
    {
        var target = PathOf(path);
        return Path.Exists(target) || new FileInfo(target).LinkTarget is not null;
    }

    /// <summary>
    /// Unpacks paths not yet in the tree (a path already there costs a stat). A path whose blob is missing is an
    /// <see cref="IOException"/>, or given to <paramref name="missing"/> and passed over.
    /// </summary>
    public async Task AddAsync(IEnumerable<(StorePath Path, NixHash NarHash)> paths, CancellationToken cancellationToken,
        Action<StorePath, NixHash>? missing = null)
    {
        Directory.CreateDirectory(StoreDirectory);
        foreach (var (path, narHash) in paths)
        {
            if (Contains(path))
            {
                continue;
            }

            var blob = await blobs.OpenReadAsync(narHash, cancellationToken).ConfigureAwait(false);
            if (blob is null)
            {
                if (missing is null)
                {
                    throw new IOException($"the blob {narHash.ToNix32()} of '{path}' is missing");
                }

                missing(path, narHash);
                continue;
            }

            var temporary = Path.Combine(StoreDirectory, $"{TemporaryPrefix}{Guid.NewGuid():N}");
            await using (blob.ConfigureAwait(false))
            {
                NarExtractor.Restore(new BufferedStream(await blob.OpenStreamAsync(cancellationToken).ConfigureAwait(false), 256 * 1024), temporary, canonical: true);
            }

            MoveIntoPlace(temporary, PathOf(path));
        }
    }

    /// <summary>A fresh name in the tree's directory for unpacking an upload while it streams in.</summary>
    public string NewTemporaryPath()
    {
        Directory.CreateDirectory(StoreDirectory);
        return Path.Combine(StoreDirectory, $"{TemporaryPrefix}{Guid.NewGuid():N}");
    }

    /// <summary>Puts a tree unpacked during the upload in place (or drops it if the path is already there).</summary>
    public void Adopt(string temporary, StorePath path) => MoveIntoPlace(temporary, PathOf(path));

    private static void MoveIntoPlace(string temporary, string target)
    {
        try
        {
            // rename(2): atomic, and it fails if another session put the path there meanwhile.
            if (new FileInfo(temporary).LinkTarget is null && Directory.Exists(temporary))
            {
                Directory.Move(temporary, target);
            }
            else
            {
                File.Move(temporary, target);
            }
        }
        catch (IOException) when (Path.Exists(target) || new FileInfo(target).LinkTarget is not null)
        {
            NarExtractor.DeleteTree(temporary);
        }
    }

    /// <summary>Removes paths from the tree.</summary>
    public void Remove(IEnumerable<StorePath> paths)
    {
        foreach (var path in paths)
        {
            NarExtractor.DeleteTree(PathOf(path));
        }
    }

    /// <summary>Makes the tree hold exactly the view's paths (after a crash, or when the account changes).</summary>
    public async Task ReconcileAsync(IReadOnlyCollection<(StorePath Path, NixHash NarHash)> view, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(StoreDirectory);
        var wanted = view.Select(v => v.Path.BaseName).ToHashSet(StringComparer.Ordinal);
        foreach (var entry in Directory.EnumerateFileSystemEntries(StoreDirectory))
        {
            var name = Path.GetFileName(entry);
            if (name.StartsWith(TemporaryPrefix, StringComparison.Ordinal) || !wanted.Contains(name))
            {
                NarExtractor.DeleteTree(entry);
            }
        }

        await AddAsync(view, cancellationToken).ConfigureAwait(false);
    }
}
