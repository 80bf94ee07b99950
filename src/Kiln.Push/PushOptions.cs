namespace Kiln.Push;

/// <summary>The operator's rules for pushes to accounts' caches (<c>kiln serve --push-…</c>).</summary>
public sealed record PushOptions
{
    /// <summary>
    /// The directories <c>file://</c> targets may lie under (none: no account pushes to a directory). An account names
    /// any path it likes; the server writes only where the operator said it may.
    /// </summary>
    public IReadOnlyList<string> FileRoots { get; init; } = [];

    /// <summary>
    /// Whether <c>http(s)://</c> and <c>s3://</c> targets may be on loopback, private or link-local addresses. Off by
    /// default: an account's push must not reach the server's own network (its database, a cloud metadata service).
    /// </summary>
    public bool AllowPrivateAddresses { get; init; }

    /// <summary>The wait before the first retry; each next one waits twice as long, up to an hour.</summary>
    public TimeSpan RetryBase { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Tries before a push is given up (its record says why).</summary>
    public int MaxAttempts { get; init; } = 10;

    /// <summary>How long the records of pushes that ended (done or given up) are kept, for the shell and the API to show.</summary>
    public TimeSpan KeepFinished { get; init; } = TimeSpan.FromDays(30);

    /// <summary>How long one try may take before it counts as failed (and another front door may claim it).</summary>
    public TimeSpan AttemptTimeout { get; init; } = TimeSpan.FromMinutes(30);

    /// <summary>Where compressed NARs are written before they are uploaded (the data directory's temporary files).</summary>
    public string TemporaryDirectory { get; init; } = Path.GetTempPath();

    /// <summary>A new directory only Kiln's user reads (0700) under <paramref name="parent"/>, for a push's key files and spools.</summary>
    internal static string PrivateDirectory(string parent, string prefix) =>
        Directory.CreateDirectory(Path.Combine(parent, $"{prefix}{Guid.NewGuid():N}"), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute).FullName;
}
