using Kiln.Store.Blobs;
using Kiln.Store.Metadata;

namespace Kiln.Store;

/// <summary>
/// <c>kiln store migrate</c>: moves an installation's metadata to another database and its blobs to another blob store
/// (the embedded SQLite and directory to PostgreSQL and S3), with the server stopped. Blobs go first and metadata
/// after, so a path is never in the new metadata before its contents are in the new store. Resumable: run again after
/// an interruption, it skips the blobs the destination has and the rows it holds already. Verified: every copied blob
/// is re-hashed on the way (its name must be what its bytes hash to), and every table is compared whole afterwards
/// (<see cref="TableDigest"/>). Only when all of that holds is the data directory bound to its new backends; until
/// then the old ones are untouched and still in use.
/// </summary>
public static class StoreMigration
{
    /// <summary>What a migration copied: blobs (copied, found there already, bytes copied) and rows per table.</summary>
    public sealed record Report(long BlobsCopied, long BlobsPresent, long BytesCopied, IReadOnlyList<(string Table, long Rows, long Added)> Tables);

    private const int RowsPerBatch = 5000;

    /// <summary>
    /// Copies the installation in <paramref name="dataDirectory"/> to <paramref name="toDatabase"/> and/or
    /// <paramref name="toBlobs"/>, checks the copy, and binds the directory to them.
    /// </summary>
    /// <exception cref="ArgumentException">A destination Kiln cannot use, or the one the directory uses already.</exception>
    /// <exception cref="InvalidOperationException">The destination database holds another installation's data, or the copy does not match.</exception>
    public static async Task<Report> MigrateDataDirectoryAsync(string dataDirectory, string? toDatabase, string? toBlobs, Action<string> progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(progress);
        var directory = Path.GetFullPath(dataDirectory);
        if (toDatabase is null && toBlobs is null)
        {
            throw new ArgumentException("say where to: --to-database, --to-blobs or both");
        }

        var fromDatabase = MetadataStores.ForDataDirectory(directory);
        if (!MetadataStores.Exists(fromDatabase))
        {
            throw new ArgumentException($"{directory} holds no Kiln installation (no {fromDatabase["sqlite://".Length..]})");
        }

        var databaseBinding = toDatabase is null ? null : MetadataStores.Resolve(toDatabase);
        if (databaseBinding is not null && databaseBinding == fromDatabase)
        {
            throw new ArgumentException("the data directory keeps its metadata in that database already");
        }

        if (toBlobs is not null)
        {
            S3BlobLocation.Parse(toBlobs);
            if (toBlobs == BlobStores.ForDataDirectory(directory))
            {
                throw new ArgumentException("the data directory keeps its blobs in that bucket already");
            }
        }

        var options = new StoreOptions { DataDirectory = directory };
        var sourceBlobs = BlobStores.Open(options);
        using var disposeSourceBlobs = sourceBlobs as IDisposable;
        var source = MetadataStores.Open(fromDatabase);
        await using (source.ConfigureAwait(false))
        {
            // As a server start would: an installation last run by an older Kiln has every table this one copies.
            await source.MigrateAsync(cancellationToken).ConfigureAwait(false);
            long copied = 0, present = 0, bytes = 0;
            if (toBlobs is not null)
            {
                // Nothing kept in DATA/blob-cache on the way: the blobs being copied are on this disk already.
                var target = BlobStores.Open(options with { BlobStoreUrl = toBlobs, BlobCacheBytes = 0 });
                using (target as IDisposable)
                {
                    (copied, present, bytes) = await CopyBlobsAsync(sourceBlobs, target, progress, cancellationToken).ConfigureAwait(false);
                    if (target is ISharedFiles shared)
                    {
                        await ShareFilesAsync(source, options, shared, progress, cancellationToken).ConfigureAwait(false);
                    }
                }
            }

            var tables = new List<(string, long, long)>();
            if (databaseBinding is not null)
            {
                var target = MetadataStores.Open(databaseBinding);
                await using (target.ConfigureAwait(false))
                {
                    tables = await CopyMetadataAsync(source, target, progress, cancellationToken).ConfigureAwait(false);
                }
            }

            // Checked and complete: from now on the data directory's server and commands use the new backends. The
            // old ones are left as they were (the operator removes them once content with the new).
            if (toBlobs is not null)
            {
                DataDirectoryBindings.Write(directory, BlobStores.BindingFile, toBlobs);
            }

            if (databaseBinding is not null)
            {
                DataDirectoryBindings.Write(directory, MetadataStores.BindingFile, databaseBinding);
            }

            return new Report(copied, present, bytes, tables);
        }
    }

    // What front doors on a bucket read from it beside the blobs: the compressed NARs kept for HTTP uploaders and the
    // build logs, named as SharedBuildLogStore and KeptNarFiles name them (put again on a resumed run: same content).
    private static async Task ShareFilesAsync(IMetadataStore source, StoreOptions options, ISharedFiles shared, Action<string> progress, CancellationToken cancellationToken)
    {
        var kept = 0;
        foreach (var file in Directory.Exists(options.NarFilesDirectory) ? Directory.EnumerateFiles(options.NarFilesDirectory) : [])
        {
            if (KeptNarFiles.HashOf(Path.GetFileName(file)) is not null)
            {
                await shared.PutFileAsync(KeptNarFiles.SharedName(Path.GetFileName(file)), file, cancellationToken).ConfigureAwait(false);
                kept++;
            }
        }

        var installation = await KilnStore.InstallationAsync(source, cancellationToken).ConfigureAwait(false);
        var logs = 0;
        foreach (var file in Directory.Exists(options.LogDirectory) ? Directory.EnumerateFiles(options.LogDirectory, "*.log", SearchOption.AllDirectories) : [])
        {
            if (long.TryParse(Path.GetFileNameWithoutExtension(file), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var id))
            {
                await shared.PutFileAsync(Logs.SharedBuildLogStore.NameOf(installation, id), file, cancellationToken).ConfigureAwait(false);
                logs++;
            }
        }

        progress($"shared files: {kept} kept compressed NARs, {logs} build logs");
    }

    /// <summary>Copies every blob <paramref name="from"/> has that <paramref name="to"/> has not, re-hashing each on the way.</summary>
    public static async Task<(long Copied, long Present, long Bytes)> CopyBlobsAsync(IBlobStore from, IBlobStore to, Action<string> progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(from);
        ArgumentNullException.ThrowIfNull(to);
        ArgumentNullException.ThrowIfNull(progress);
        long copied = 0, present = 0, bytes = 0, seen = 0;
        var corrupt = new System.Collections.Concurrent.ConcurrentBag<string>();

        // A few at once: an object store's round trips, not the bandwidth, bound one copy at a time.
        await Parallel.ForEachAsync(from.ListAsync(cancellationToken), new ParallelOptions { MaxDegreeOfParallelism = 4, CancellationToken = cancellationToken }, async (blob, token) =>
        {
            if (await to.HasAsync(blob.Hash, token).ConfigureAwait(false))
            {
                Interlocked.Increment(ref present);
            }
            else if (await CopyBlobAsync(from, to, blob.Hash, token).ConfigureAwait(false) is { } length)
            {
                Interlocked.Increment(ref copied);
                Interlocked.Add(ref bytes, length);
            }
            else
            {
                corrupt.Add(blob.Hash.ToNix32());
            }

            if (Interlocked.Increment(ref seen) % 1000 == 0)
            {
                progress($"blobs: {Interlocked.Read(ref copied)} copied, {Interlocked.Read(ref present)} there already");
            }
        }).ConfigureAwait(false);

        progress($"blobs: {copied} copied ({bytes} bytes), {present} there already");
        if (!corrupt.IsEmpty)
        {
            // Copying them would put a lie under their names in the new store; leaving them out silently would lose
            // paths. The operator decides (kiln store verify names the paths; repairing them fetches them again).
            throw new InvalidOperationException($"{corrupt.Count} blobs are corrupt here and were not copied ({string.Join(", ", corrupt.Take(5))}…); " +
                "run 'kiln store verify' on this installation and repair or delete those paths first");
        }

        return (copied, present, bytes);
    }

    // The blob's length when copied; null when its contents do not hash to its name (or it went meanwhile, which
    // cannot happen with the server stopped, and is the same loss).
    private static async Task<long?> CopyBlobAsync(IBlobStore from, IBlobStore to, Nix.Hashing.NixHash hash, CancellationToken cancellationToken)
    {
        var blob = await from.OpenReadAsync(hash, cancellationToken).ConfigureAwait(false);
        if (blob is null)
        {
            return null;
        }

        await using (blob.ConfigureAwait(false))
        {
            var writer = to.CreateWriter();
            await using (writer.ConfigureAwait(false))
            {
                var stream = await blob.OpenStreamAsync(cancellationToken).ConfigureAwait(false);
                var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(1 << 20);
                try
                {
                    int read;
                    while ((read = await stream.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
                    {
                        writer.Write(buffer.AsSpan(0, read));
                    }
                }
                finally
                {
                    System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
                }

                if (await writer.CompleteAsync(cancellationToken).ConfigureAwait(false) != hash)
                {
                    return null; // disposed uncommitted: nothing of it stays
                }

                await writer.CommitAsync(cancellationToken).ConfigureAwait(false);
                return writer.Length;
            }
        }
    }

    /// <summary>
    /// Copies every table <paramref name="from"/> holds into <paramref name="to"/> (migrated to the current schema), then
    /// compares them whole. Refuses a destination that holds accounts the source has not: its rows would collide with
    /// the copied ones under the same ids.
    /// </summary>
    public static async Task<List<(string Table, long Rows, long Added)>> CopyMetadataAsync(IMetadataStore from, IMetadataStore to, Action<string> progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(from);
        ArgumentNullException.ThrowIfNull(to);
        ArgumentNullException.ThrowIfNull(progress);
        await to.MigrateAsync(cancellationToken).ConfigureAwait(false);
        await CheckDestinationAsync(from, to, cancellationToken).ConfigureAwait(false);

        var result = new List<(string, long, long)>();
        foreach (var table in MetadataTables.All)
        {
            long rows = 0, added = 0;
            var batch = new List<object?[]>(RowsPerBatch);
            await foreach (var row in from.ReadTableAsync(table, cancellationToken).ConfigureAwait(false))
            {
                batch.Add(row);
                if (batch.Count == RowsPerBatch)
                {
                    added += await to.AddRowsAsync(table, batch, cancellationToken).ConfigureAwait(false);
                    rows += batch.Count;
                    batch.Clear();
                }
            }

            added += await to.AddRowsAsync(table, batch, cancellationToken).ConfigureAwait(false);
            rows += batch.Count;
            progress($"{table.Name}: {rows} rows ({added} added, {rows - added} there already)");
            result.Add((table.Name, rows, added));
        }

        await to.FinishAddingRowsAsync(cancellationToken).ConfigureAwait(false);
        foreach (var table in MetadataTables.All)
        {
            var here = await TableDigest.OfAsync(table, from.ReadTableAsync(table, cancellationToken), cancellationToken).ConfigureAwait(false);
            var there = await TableDigest.OfAsync(table, to.ReadTableAsync(table, cancellationToken), cancellationToken).ConfigureAwait(false);
            if (here != there)
            {
                throw new InvalidOperationException($"the copy of table {table.Name} does not match ({here.Rows} rows here, {there.Rows} there): " +
                    "the destination database holds rows of another installation; migrate into an empty database");
            }
        }

        progress("metadata: every table compared equal");
        return result;
    }

    private static async Task CheckDestinationAsync(IMetadataStore from, IMetadataStore to, CancellationToken cancellationToken)
    {
        var accounts = MetadataTables.All[0];
        var ours = new HashSet<(long, string, long)>();
        await foreach (var row in from.ReadTableAsync(accounts, cancellationToken).ConfigureAwait(false))
        {
            ours.Add(((long)row[0]!, (string)row[1]!, (long)row[2]!));
        }

        await foreach (var row in to.ReadTableAsync(accounts, cancellationToken).ConfigureAwait(false))
        {
            if (!ours.Contains(((long)row[0]!, (string)row[1]!, (long)row[2]!)))
            {
                // Named by its id only: the operator knows which database they gave; no account names of another
                // installation in a message that may be pasted somewhere.
                throw new InvalidOperationException($"the destination database holds an account this installation has not (id {row[0]}); migrate into an empty database");
            }
        }
    }
}
