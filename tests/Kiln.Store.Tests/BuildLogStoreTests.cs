using System.Text;
using Kiln.Nix.Tests.Support;
using Kiln.Store.Blobs;
using Kiln.Store.Logs;

namespace Kiln.Store.Tests;

/// <summary>
/// The contract of <see cref="IBuildLogStore"/>: each build's log, written once by that build, read back from any
/// offset, and followed live until its writer is done. Each store's test class derives from it and says how to make
/// an empty store: a directory now, shared storage when Kiln scales out.
/// </summary>
public abstract class BuildLogStoreContract
{
    /// <summary>How long anything the store promises may take on a loaded machine before the test gives up.</summary>
    protected static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    /// <summary>An empty store, the same one for the whole test.</summary>
    protected abstract IBuildLogStore Store { get; }

    private async Task<string?> ReadAsync(long buildId, long offset = 0)
    {
        var stream = await Store.OpenReadAsync(buildId, offset, default);
        if (stream is null)
        {
            return null;
        }

        await using (stream)
        {
            using var reader = new StreamReader(stream, Encoding.UTF8);
            return await reader.ReadToEndAsync();
        }
    }

    private static async Task<string> NextAsync(IAsyncEnumerator<string> lines)
    {
        Assert.True(await lines.MoveNextAsync().AsTask().WaitAsync(Patience), "the log ended");
        return lines.Current;
    }

    private static async Task AssertEndsAsync(IAsyncEnumerator<string> lines) =>
        Assert.False(await lines.MoveNextAsync().AsTask().WaitAsync(Patience), "the log did not end");

    [Fact]
    public async Task Lines_appended_are_read_back_from_the_start_or_an_offset()
    {
        using (var writer = Store.Create(7))
        {
            writer.AppendLine("one");
            writer.AppendLine("two");

            // Readable while the build runs, as far as it is written.
            Assert.Equal("one\ntwo\n", await ReadAsync(7));
            writer.AppendLine("thrée ✓");
        }

        Assert.Equal("one\ntwo\nthrée ✓\n", await ReadAsync(7));
        Assert.Equal("two\nthrée ✓\n", await ReadAsync(7, "one\n".Length));
        Assert.Equal("wo\nthrée ✓\n", await ReadAsync(7, "one\nt".Length));
        var length = Encoding.UTF8.GetByteCount("one\ntwo\nthrée ✓\n");
        Assert.Equal("", await ReadAsync(7, length));
        Assert.Equal("", await ReadAsync(7, length + 100)); // past the end: nothing, not an error
    }

    [Fact]
    public async Task Long_lines_and_broken_text_are_written_whole_as_UTF8()
    {
        // Past every buffer size the writer might have: a line of 200,000 characters, most of them two or three bytes
        // long in UTF-8, and one four-byte character across each 4,096-character boundary a chunked writer would cut.
        var longLine = string.Concat(Enumerable.Range(0, 20_000).Select(i => i % 2 == 0 ? "é€abcdefg" : "h𝄞ijklmn"));
        using (var writer = Store.Create(11))
        {
            writer.AppendLine("before");
            writer.AppendLine(longLine);
            writer.AppendLine("a lone \ud800 surrogate");
            writer.AppendLine("");
            writer.AppendLine("after");
        }

        var stream = await Store.OpenReadAsync(11, 0, default);
        Assert.NotNull(stream);
        using var bytes = new MemoryStream();
        await using (stream)
        {
            await stream.CopyToAsync(bytes);
        }

        // Invalid UTF-16 becomes U+FFFD (EF BF BD); nothing else changes, and there is no byte-order mark.
        var expected = Encoding.UTF8.GetBytes($"before\n{longLine}\na lone \ufffd surrogate\n\nafter\n");
        Assert.Equal(expected, bytes.ToArray());
    }

    [Fact]
    public async Task An_empty_log_reads_as_empty()
    {
        using (Store.Create(8))
        {
            Assert.Equal("", await ReadAsync(8));
        }

        Assert.Equal("", await ReadAsync(8));
    }

    [Fact]
    public async Task A_build_without_a_log_has_none()
    {
        Assert.Null(await Store.OpenReadAsync(404, 0, default));
        Assert.Null(await Store.OpenReadAsync(404, 10, default));
        await foreach (var line in Store.FollowAsync(404, default))
        {
            Assert.Fail($"a log that does not exist has a line: {line}");
        }
    }

    [Fact]
    public async Task A_log_is_written_by_its_build_alone_and_a_stale_one_never_shows_through()
    {
        var writer = Store.Create(9);
        writer.AppendLine("the build's own line");

        // While its build writes it, no other writer can start the same log.
        Assert.ThrowsAny<IOException>(() => Store.Create(9));
        writer.AppendLine("still the build's");
        writer.Dispose();
        Assert.Equal("the build's own line\nstill the build's\n", await ReadAsync(9));

        // A build given the same id later (the metadata was reset, the logs kept) starts an empty log: it never sees,
        // nor shows its account, what the earlier build wrote.
        using (var again = Store.Create(9))
        {
            again.AppendLine("a new build's line");
        }

        Assert.Equal("a new build's line\n", await ReadAsync(9));
    }

    [Fact]
    public async Task Appending_after_the_writer_is_done_changes_nothing()
    {
        var writer = Store.Create(10);
        writer.AppendLine("last");
        writer.Dispose();
        writer.AppendLine("after the end");
        writer.Dispose();
        Assert.Equal("last\n", await ReadAsync(10));
    }

    [Fact]
    public async Task Following_yields_the_lines_written_so_far_then_new_ones_until_the_writer_is_done()
    {
        using var patience = new CancellationTokenSource(Patience);
        var writer = Store.Create(11);
        try
        {
            writer.AppendLine("before 1");
            writer.AppendLine("before 2");

            await using var lines = Store.FollowAsync(11, patience.Token).GetAsyncEnumerator(patience.Token);
            Assert.Equal("before 1", await NextAsync(lines));
            Assert.Equal("before 2", await NextAsync(lines));

            // The follower waits for the next line…
            var next = lines.MoveNextAsync().AsTask();
            await Task.Delay(200);
            Assert.False(next.IsCompleted);
            writer.AppendLine("after 1");
            Assert.True(await next.WaitAsync(Patience));
            Assert.Equal("after 1", lines.Current);

            // …including several appended at once while it was not looking…
            writer.AppendLine("after 2");
            writer.AppendLine("after 3");
            Assert.Equal("after 2", await NextAsync(lines));
            Assert.Equal("after 3", await NextAsync(lines));

            // …and ends when the build is done with its log.
            next = lines.MoveNextAsync().AsTask();
            writer.AppendLine("last");
            writer.Dispose();
            Assert.True(await next.WaitAsync(Patience));
            Assert.Equal("last", lines.Current);
            await AssertEndsAsync(lines);
        }
        finally
        {
            writer.Dispose();
        }
    }

    [Fact]
    public async Task Following_a_log_started_but_still_empty_waits_for_its_first_line()
    {
        using var patience = new CancellationTokenSource(Patience);
        using var writer = Store.Create(12);
        await using var lines = Store.FollowAsync(12, patience.Token).GetAsyncEnumerator(patience.Token);
        var next = lines.MoveNextAsync().AsTask();
        await Task.Delay(200);
        Assert.False(next.IsCompleted);

        writer.AppendLine("first");
        Assert.True(await next.WaitAsync(Patience));
        Assert.Equal("first", lines.Current);
        writer.Dispose();
        await AssertEndsAsync(lines);
    }

    [Fact]
    public async Task Following_a_finished_log_yields_it_whole_and_ends()
    {
        using (var writer = Store.Create(13))
        {
            writer.AppendLine("a");
            writer.AppendLine("");
            writer.AppendLine("c");
        }

        var lines = new List<string>();
        using var patience = new CancellationTokenSource(Patience);
        await foreach (var line in Store.FollowAsync(13, patience.Token))
        {
            lines.Add(line);
        }

        Assert.Equal(["a", "", "c"], lines);
    }

    [Fact]
    public async Task Following_stops_when_cancelled()
    {
        using var writer = Store.Create(14);
        writer.AppendLine("only");
        using var cancel = new CancellationTokenSource();
        await using var lines = Store.FollowAsync(14, cancel.Token).GetAsyncEnumerator(cancel.Token);
        Assert.Equal("only", await NextAsync(lines));

        var next = lines.MoveNextAsync().AsTask();
        await cancel.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => next.WaitAsync(Patience));
    }

    [Fact]
    public async Task Two_builds_logs_are_independent()
    {
        using var patience = new CancellationTokenSource(Patience);
        var first = Store.Create(21);
        var second = Store.Create(1021); // another thousand as well
        try
        {
            first.AppendLine("first 1");
            second.AppendLine("second 1");
            first.AppendLine("first 2");

            await using var following = Store.FollowAsync(21, patience.Token).GetAsyncEnumerator(patience.Token);
            Assert.Equal("first 1", await NextAsync(following));
            Assert.Equal("first 2", await NextAsync(following));

            // The other build finishing ends neither the first log nor its follower.
            second.AppendLine("second 2");
            second.Dispose();
            var next = following.MoveNextAsync().AsTask();
            await Task.Delay(200);
            Assert.False(next.IsCompleted);
            first.AppendLine("first 3");
            Assert.True(await next.WaitAsync(Patience));
            Assert.Equal("first 3", following.Current);
            first.Dispose();
            await AssertEndsAsync(following);

            Assert.Equal("first 1\nfirst 2\nfirst 3\n", await ReadAsync(21));
            Assert.Equal("second 1\nsecond 2\n", await ReadAsync(1021));
            Assert.Null(await ReadAsync(22));
        }
        finally
        {
            first.Dispose();
            second.Dispose();
        }
    }
}

/// <summary>The contract, run against the directory store; and what is the directory's own: file permissions.</summary>
public sealed class FileBuildLogStoreTests : BuildLogStoreContract, IDisposable
{
    private readonly TempDir _temp = new();
    private readonly FileBuildLogStore _store;

    public FileBuildLogStoreTests() => _store = new FileBuildLogStore(_temp["logs"]);

    protected override IBuildLogStore Store => _store;

    [Fact]
    public void A_log_file_is_readable_by_Kiln_only()
    {
        using (var writer = Store.Create(1234))
        {
            writer.AppendLine("a secret of the build's account");
        }

        var file = Assert.Single(Directory.GetFiles(_temp["logs"], "*", SearchOption.AllDirectories));
        Assert.Equal("1234.log", Path.GetFileName(file));
        const UnixFileMode others = UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.GroupExecute
            | UnixFileMode.OtherRead | UnixFileMode.OtherWrite | UnixFileMode.OtherExecute;
        var mode = File.GetUnixFileMode(file);
        Assert.Equal((UnixFileMode)0, mode & others);
        Assert.True(mode.HasFlag(UnixFileMode.UserRead));
    }

    // What the metadata no longer records goes (another front door deleted the account); a log being written stays
    // even so, as do recorded ones, partial fetches of the last hour and files that are not logs.
    [Fact]
    public async Task Prune_removes_the_logs_of_builds_without_a_record_and_old_partial_fetches()
    {
        foreach (var id in new long[] { 7, 1500, 2001 })
        {
            using var writer = _store.Create(id);
            writer.AppendLine($"build {id}");
        }

        using var running = _store.Create(1501);
        running.AppendLine("still at it");
        var directory = Path.GetDirectoryName(_store.FileOf(1500))!;
        var oldPart = Path.Combine(directory, "1502.log.0123.part");
        var newPart = Path.Combine(directory, "1503.log.4567.part");
        var other = Path.Combine(directory, "notes.txt");
        foreach (var file in new[] { oldPart, newPart, other })
        {
            await File.WriteAllTextAsync(file, "x");
        }

        File.SetLastWriteTimeUtc(oldPart, DateTime.UtcNow.AddHours(-2));
        File.SetLastWriteTimeUtc(other, DateTime.UtcNow.AddHours(-2));

        var asked = new List<long>();
        var removed = await _store.PruneAsync((ids, _) =>
        {
            asked.AddRange(ids);
            return Task.FromResult<IReadOnlySet<long>>(new HashSet<long> { 1500 });
        }, default);

        Assert.Equal(3, removed); // 7, 2001 and the old partial fetch
        Assert.Equal([7, 1500, 2001], asked.Order());
        Assert.Equal("build 1500\n", await File.ReadAllTextAsync(_store.FileOf(1500)));
        Assert.False(File.Exists(_store.FileOf(7)));
        Assert.False(File.Exists(_store.FileOf(2001)));
        Assert.True(File.Exists(_store.FileOf(1501)));
        Assert.False(File.Exists(oldPart));
        Assert.True(File.Exists(newPart));
        Assert.True(File.Exists(other));
    }

    public void Dispose() => _temp.Dispose();
}

/// <summary>
/// The contract, run against front doors' shared logs on a real S3 server (s3rver); and what sharing adds: a log
/// written and sealed by one front door is read and followed whole by another (its own directory, the same bucket),
/// and a log not sealed yet (its build still running there) is not there at all.
/// </summary>
public sealed class SharedBuildLogStoreTests : BuildLogStoreContract, IDisposable
{
    private readonly TempDir _temp = new();
    private readonly S3Server _server;
    private readonly string _location;
    private readonly List<S3BlobStore> _buckets = [];
    private readonly SharedBuildLogStore _store;

    public SharedBuildLogStoreTests(S3Server server)
    {
        _server = server;
        _location = server.NewLocation();
        _store = FrontDoor("a");
    }

    private SharedBuildLogStore FrontDoor(string name)
    {
        var bucket = new S3BlobStore(S3BlobLocation.Parse(_location), new LocalBlobCache(_temp[$"cache-{name}"], 0));
        _buckets.Add(bucket);
        return new SharedBuildLogStore(new FileBuildLogStore(_temp[$"logs-{name}"]), bucket, "installation-1");
    }

    protected override IBuildLogStore Store => _store;

    [Fact]
    public async Task A_sealed_log_is_read_by_another_front_door_and_an_unsealed_one_is_not()
    {
        var other = FrontDoor("b");
        using (var writer = _store.Create(501))
        {
            writer.AppendLine("line one");
            writer.AppendLine("ünïcode two");
            Assert.Null(await other.OpenReadAsync(501, 0, default)); // still running on front door a
        }

        Assert.Null(await other.OpenReadAsync(501, 0, default)); // ended, not yet sealed
        await _store.SealAsync(501, default);
        Assert.Contains(_server.ObjectFiles(_location), f => f.Contains("501.log", StringComparison.Ordinal));

        await using (var stream = (await other.OpenReadAsync(501, 5, default))!)
        {
            using var reader = new StreamReader(stream);
            Assert.Equal("one\nünïcode two\n", await reader.ReadToEndAsync());
        }

        var followed = new List<string>();
        await foreach (var line in FrontDoor("c").FollowAsync(501, default))
        {
            followed.Add(line);
        }

        Assert.Equal(["line one", "ünïcode two"], followed);
        Assert.Null(await other.OpenReadAsync(502, 0, default)); // no build, no log, anywhere

        // Another installation on the same bucket (or this one after its database was reset) has build 501 too: it
        // never gets this one's log.
        var bucket = new S3BlobStore(S3BlobLocation.Parse(_location), new LocalBlobCache(_temp["cache-other"], 0));
        _buckets.Add(bucket);
        Assert.Null(await new SharedBuildLogStore(new FileBuildLogStore(_temp["logs-other"]), bucket, "installation-2").OpenReadAsync(501, 0, default));
    }

    public void Dispose()
    {
        foreach (var bucket in _buckets)
        {
            bucket.Dispose();
        }

        _temp.Dispose();
    }
}
