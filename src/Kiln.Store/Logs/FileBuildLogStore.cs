using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Text;

namespace Kiln.Store.Logs;

/// <summary>
/// <see cref="IBuildLogStore"/> in a directory: <c>&lt;id / 1000&gt;/&lt;id&gt;.log</c>, plain text, readable by Kiln
/// only. A log being written is followed through its writer's signal (this process writes every log it serves live).
/// </summary>
public sealed class FileBuildLogStore(string directory, Microsoft.Extensions.Logging.ILogger? logger = null) : IBuildLogStore
{
    private readonly ConcurrentDictionary<long, Writer> _active = new();
    private readonly Lock _starting = new(); // a log's start and the prune's deletion of a file by its name, one at a time
    private readonly Microsoft.Extensions.Logging.ILogger _logger = logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance;

    private string PathOf(long buildId) =>
        Path.Combine(directory, (buildId / 1000).ToString(System.Globalization.CultureInfo.InvariantCulture), $"{buildId}.log");

    /// <summary>Where a build's log is (or would be) kept.</summary>
    internal string FileOf(long buildId) => PathOf(buildId);

    // Every reader looks in this directory, where the log already is.
    public Task SealAsync(long buildId, CancellationToken cancellationToken) => Task.CompletedTask;

    public IBuildLogWriter Create(long buildId)
    {
        var path = PathOf(buildId);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        // Known as active before the file exists, so a follower that finds the file also finds its writer.
        var writer = new Writer(this, buildId);
        lock (_starting)
        {
            if (!_active.TryAdd(buildId, writer))
            {
                throw new IOException($"build {buildId} already has a log being written");
            }
        }

        try
        {
            // Ids come from the build records, so a file already there is stale (records reset, logs kept): it is
            // replaced, never appended to or shown.
            File.Delete(path);
            var file = new FileStream(path, new FileStreamOptions
            {
                Mode = FileMode.CreateNew,
                Access = FileAccess.Write,
                Share = FileShare.Read,
                UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
                BufferSize = 0, // each line is written whole by the writer
            });
            writer.Open(file);
            return writer;
        }
        catch
        {
            _active.TryRemove(buildId, out _);
            throw;
        }
    }

    public Task<Stream?> OpenReadAsync(long buildId, long offset, CancellationToken cancellationToken)
    {
        try
        {
            var file = new FileStream(PathOf(buildId), FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 64 * 1024, FileOptions.Asynchronous);
            file.Seek(Math.Min(Math.Max(0, offset), file.Length), SeekOrigin.Begin);
            return Task.FromResult<Stream?>(file);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return Task.FromResult<Stream?>(null);
        }
    }

    /// <summary>
    /// Deletes the logs here whose build has no record any more, and partial fetches older than an hour: with several
    /// front doors, the copies one fetched of builds whose account was deleted through another (which deleted its own
    /// and the bucket's). A log being written is left alone. Returns how many went.
    /// </summary>
    public async Task<int> PruneAsync(Func<IReadOnlyCollection<long>, CancellationToken, Task<IReadOnlySet<long>>> recorded, CancellationToken cancellationToken)
    {
        if (!Directory.Exists(directory))
        {
            return 0;
        }

        var removed = 0;
        var anHourAgo = DateTime.UtcNow.AddHours(-1);
        var logs = new List<(long Id, string File)>();
        var skipUnreadable = new EnumerationOptions { IgnoreInaccessible = true };
        foreach (var thousand in new DirectoryInfo(directory).EnumerateDirectories("*", skipUnreadable))
        {
            foreach (var file in thousand.EnumerateFiles("*", skipUnreadable))
            {
                if (file.Name.EndsWith(".part", StringComparison.Ordinal) && file.LastWriteTimeUtc < anHourAgo)
                {
                    file.Delete();
                    removed++;
                }
                else if (file.Name.EndsWith(".log", StringComparison.Ordinal)
                    && long.TryParse(file.Name.AsSpan(0, file.Name.Length - 4), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var id)
                    && !_active.ContainsKey(id))
                {
                    logs.Add((id, file.FullName));
                }
            }
        }

        foreach (var batch in logs.Chunk(1000))
        {
            var kept = await recorded(batch.Select(l => l.Id).ToList(), cancellationToken).ConfigureAwait(false);
            foreach (var (id, file) in batch.Where(l => !kept.Contains(l.Id)))
            {
                // Not if its build started since the listing (ids given out again after a reset): its writer is
                // known before its file is replaced.
                lock (_starting)
                {
                    if (_active.ContainsKey(id))
                    {
                        continue;
                    }

                    File.Delete(file);
                }

                removed++;
            }
        }

        return removed;
    }

    public Task DeleteAsync(long buildId, CancellationToken cancellationToken)
    {
        File.Delete(PathOf(buildId)); // (a writer still at it writes on into the unlinked file, which nobody can open)
        return Task.CompletedTask;
    }

    public async IAsyncEnumerable<string> FollowAsync(long buildId, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var stream = await OpenReadAsync(buildId, 0, cancellationToken).ConfigureAwait(false);
        if (stream is null)
        {
            yield break;
        }

        // Lines are split here, not by ReadLine: text after the last newline may be a line still being written, and is
        // held back until its newline (or the end of the log) arrives.
        using var reader = new StreamReader(stream, Encoding.UTF8);
        var buffer = new char[16 * 1024];
        var pending = new StringBuilder();
        while (true)
        {
            // Taken before reading: a line appended after the reads below completes this task.
            var more = _active.TryGetValue(buildId, out var writer) ? writer.NextAppend : null;
            int read;
            while ((read = await reader.ReadAsync(buffer.AsMemory(), cancellationToken).ConfigureAwait(false)) > 0)
            {
                var start = 0;
                for (var i = 0; i < read; i++)
                {
                    if (buffer[i] == '\n')
                    {
                        pending.Append(buffer, start, i - start);
                        yield return pending.ToString();
                        pending.Clear();
                        start = i + 1;
                    }
                }

                pending.Append(buffer, start, read - start);
            }

            if (more is null)
            {
                if (pending.Length > 0)
                {
                    yield return pending.ToString();
                }

                yield break;
            }

            await more.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private sealed class Writer(FileBuildLogStore owner, long buildId) : IBuildLogWriter
    {
        // Invalid UTF-16 (a lone surrogate) becomes U+FFFD, as a StreamWriter wrote it; no byte-order mark.
        private static readonly UTF8Encoding Utf8 = new(encoderShouldEmitUTF8Identifier: false);

        private readonly Lock _gate = new();
        private FileStream _file = null!;

        public void Open(FileStream file) => _file = file;

        private TaskCompletionSource _appended = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private bool _done;

        // Set when a write failed (the disk is full): the log keeps what it had, and the build is not failed for it.
        private bool _broken;

        /// <summary>Completes at the next append, or when the log is done.</summary>
        public Task NextAppend
        {
            get
            {
                lock (_gate)
                {
                    return _done ? Task.CompletedTask : _appended.Task;
                }
            }
        }

        public void AppendLine(string line)
        {
            TaskCompletionSource signal;
            lock (_gate)
            {
                if (_done || _broken)
                {
                    return;
                }

                // Readers and followers see each line as it comes, whole: encoded and written with its newline in one
                // write. The bytes come from the shared pool: a StreamWriter's buffers big enough for a long line
                // (64 Ki characters and their UTF-8) were two large-object allocations per build, a full collection
                // every few seconds of a busy build server.
                // (A long line is counted first rather than sized for its worst case, three bytes a character.)
                var size = line.Length <= 4096 ? Utf8.GetMaxByteCount(line.Length) : Utf8.GetByteCount(line);
                var buffer = ArrayPool<byte>.Shared.Rent(size + 1);
                try
                {
                    var length = Utf8.GetBytes(line, buffer);
                    buffer[length] = (byte)'\n';
                    _file.Write(buffer, 0, length + 1);
                }
                catch (IOException e)
                {
                    _broken = true;
                    StoreLog.LogWriteFailed(owner._logger, buildId, e);
                    return;
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }

                signal = _appended;
                _appended = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            signal.TrySetResult();
        }

        public void Dispose()
        {
            lock (_gate)
            {
                if (_done)
                {
                    return;
                }

                _done = true;
                try
                {
                    _file.Dispose();
                }
                catch (IOException) when (_broken)
                {
                    // Nothing is buffered: the failure was logged when the write failed.
                }
                catch (IOException e)
                {
                    StoreLog.LogWriteFailed(owner._logger, buildId, e);
                }
            }

            owner._active.TryRemove(buildId, out _);
            _appended.TrySetResult();
        }
    }
}
