using System.Runtime.CompilerServices;
using Kiln.Nix.Hashing;

namespace Kiln.Store.Blobs;

/// <summary>
/// <see cref="IBlobStore"/> in a directory: <c>blobs/&lt;2 chars&gt;/&lt;nix32 sha256&gt;.nar</c>. A blob is written to
/// <c>blobs/tmp/</c> while it is hashed, and renamed into place on commit (an atomic rename on one file system), so a
/// file under a blob's name is always complete and correct. Committing content that is stored already drops the new
/// copy: content is deduplicated across every path and account.
/// </summary>
public sealed class DiskBlobStore : IBlobStore
{
    private readonly string _root;
    private readonly string _temp;
    private readonly LiveFiles _live = new();
    private readonly bool _fsync;

    public DiskBlobStore(string root, bool fsync)
    {
        _root = root;
        _temp = Path.Combine(root, "tmp");
        _fsync = fsync;
        Directory.CreateDirectory(_temp);
    }

    private string PathOf(NixHash hash)
    {
        var name = hash.ToNix32();
        return Path.Combine(_root, name[..2], name + ".nar");
    }

    public ValueTask<bool> HasAsync(NixHash hash, CancellationToken cancellationToken) => ValueTask.FromResult(File.Exists(PathOf(hash)));

    public ValueTask<BlobSource?> OpenReadAsync(NixHash hash, CancellationToken cancellationToken)
    {
        try
        {
            // Unbuffered: readers copy in large blocks or hand the file to sendfile (.NET's sendfile path wants a file
            // opened for asynchronous reads).
            var file = new FileStream(PathOf(hash), FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete, bufferSize: 0,
                FileOptions.Asynchronous | FileOptions.SequentialScan);
            return ValueTask.FromResult<BlobSource?>(BlobSource.FromFile(hash, file));
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return ValueTask.FromResult<BlobSource?>(null);
        }
    }

    public async ValueTask<NixHash?> HashStoredAsync(NixHash hash, CancellationToken cancellationToken)
    {
        var source = await OpenReadAsync(hash, cancellationToken).ConfigureAwait(false);
        return source is null ? null : await source.HashAsync(cancellationToken).ConfigureAwait(false);
    }

    public IBlobWriter CreateWriter() => new Writer(this);

    public ValueTask<bool> DeleteAsync(NixHash hash, CancellationToken cancellationToken)
    {
        var path = PathOf(hash);
        if (!File.Exists(path))
        {
            return ValueTask.FromResult(false);
        }

        File.Delete(path);
        return ValueTask.FromResult(true);
    }

    public async IAsyncEnumerable<StoredBlob> ListAsync([EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await Task.Yield();
        foreach (var directory in Directory.EnumerateDirectories(_root))
        {
            if (Path.GetFileName(directory) == "tmp")
            {
                continue;
            }

            foreach (var file in Directory.EnumerateFiles(directory, "*.nar"))
            {
                cancellationToken.ThrowIfCancellationRequested();
                NixHash hash;
                try
                {
                    hash = NixHash.ParseUnprefixed(Path.GetFileNameWithoutExtension(file), NixHashAlgorithm.Sha256);
                }
                catch (Kiln.Nix.BadHashException)
                {
                    continue; // not a blob of ours
                }

                var info = new FileInfo(file);
                if (info.Exists)
                {
                    yield return new StoredBlob(hash, info.Length, info.LastWriteTimeUtc);
                }
            }
        }
    }

    // Its files are for this server alone to send.
    public Uri? LinkFor(NixHash hash, TimeSpan lifetime) => null;

    public ValueTask<int> CleanAbandonedAsync(TimeSpan age, CancellationToken cancellationToken)
    {
        var removed = 0;
        foreach (var file in Directory.EnumerateFiles(_temp))
        {
            if (!_live.Contains(file) && DateTime.UtcNow - File.GetLastWriteTimeUtc(file) >= age)
            {
                DeleteQuietly(file);
                removed++;
            }
        }

        return ValueTask.FromResult(removed);
    }

    private static void DeleteQuietly(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>A blob being written to <c>tmp/</c>; renamed into place on commit.</summary>
    private sealed class Writer : IBlobWriter
    {
        private readonly DiskBlobStore _store;
        private readonly string _path;
        private readonly FileStream _file;
        private readonly HashingSink _hash = new(NixHashAlgorithm.Sha256);
        private NixHash? _completed;
        private bool _committed;

        public Writer(DiskBlobStore store)
        {
            _store = store;
            _path = store._live.Add(Path.Combine(store._temp, $"{Guid.NewGuid():N}.tmp"));
            try
            {
                // Unbuffered and synchronous: callers write large chunks, and on Linux .NET's asynchronous file writes
                // only move the same write to another thread.
                _file = new FileStream(_path, new FileStreamOptions
                {
                    Mode = FileMode.CreateNew,
                    Access = FileAccess.Write,
                    Share = FileShare.None,
                    BufferSize = 0,
                    UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
                });
            }
            catch
            {
                store._live.Remove(_path);
                throw;
            }
        }

        public long Length => _hash.BytesWritten;

        public void Write(ReadOnlySpan<byte> data)
        {
            if (_completed is not null)
            {
                throw new InvalidOperationException("the blob is complete");
            }

            _hash.Append(data);
            _file.Write(data);
        }

        public ValueTask<NixHash> CompleteAsync(CancellationToken cancellationToken)
        {
            if (_completed is null)
            {
                _file.Flush(flushToDisk: _store._fsync);
                _file.Dispose();
                _completed = _hash.Finish();
            }

            return ValueTask.FromResult(_completed.Value);
        }

        public async ValueTask CommitAsync(CancellationToken cancellationToken)
        {
            var hash = await CompleteAsync(cancellationToken).ConfigureAwait(false);
            if (_committed)
            {
                return;
            }

            var target = _store.PathOf(hash);
            if (File.Exists(target))
            {
                DeleteQuietly(_path);
            }
            else
            {
                Directory.CreateDirectory(Path.GetDirectoryName(target)!);
                File.SetUnixFileMode(_path, UnixFileMode.UserRead); // Kiln's alone, never written again
                File.Move(_path, target, overwrite: true);
            }

            _committed = true;
        }

        public ValueTask DisposeAsync()
        {
            _file.Dispose();
            _hash.Dispose();
            if (!_committed)
            {
                DeleteQuietly(_path);
            }

            _store._live.Remove(_path);
            return ValueTask.CompletedTask;
        }
    }
}
