namespace Kiln.Store.Blobs;

/// <summary>
/// Where blobs live — the one place a blob store is chosen: the data directory's <c>blobs/</c> (the embedded default),
/// or an S3 bucket (<c>s3://…</c>, <see cref="S3BlobLocation"/>) with recently used blobs kept in <c>DATA/blob-cache</c>.
/// A data directory remembers a bucket it was given (<see cref="BindingFile"/>), as it remembers its database.
/// </summary>
public static class BlobStores
{
    /// <summary>The file in a data directory that names the bucket it is bound to.</summary>
    public const string BindingFile = "blob-store";

    /// <summary>The blob store a data directory uses: the bucket it was bound to, or null for its own <c>blobs/</c>.</summary>
    public static string? ForDataDirectory(string dataDirectory) => DataDirectoryBindings.Read(dataDirectory, BindingFile);

    /// <summary>Binds a data directory to a bucket (checked, not yet reached).</summary>
    /// <exception cref="ArgumentException">Not an S3 location, or the directory already keeps blobs of its own.</exception>
    public static void Bind(string dataDirectory, string location)
    {
        S3BlobLocation.Parse(location);
        var directory = Path.GetFullPath(dataDirectory);
        var own = Path.Combine(directory, "blobs");
        if (ForDataDirectory(directory) is null && Directory.Exists(own) && Directory.EnumerateFileSystemEntries(own).Any(e => Path.GetFileName(e) != "tmp"))
        {
            // Switching silently would leave every stored NAR behind.
            throw new ArgumentException($"{directory} keeps its blobs in {own}; start an S3 front door with a new data directory");
        }

        DataDirectoryBindings.Write(directory, BindingFile, location);
    }

    /// <summary>Opens the blob store <paramref name="options"/> name.</summary>
    public static IBlobStore Open(StoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return (options.BlobStoreUrl ?? ForDataDirectory(options.DataDirectory)) is { } url
            ? new S3BlobStore(S3BlobLocation.Parse(url), new LocalBlobCache(options.BlobCacheDirectory, options.BlobCacheBytes))
            : new DiskBlobStore(options.BlobDirectory, options.FsyncBlobs);
    }
}
