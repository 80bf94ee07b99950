namespace Kiln.Store;

/// <summary>
/// Where the store learns an account's policies that live above it, in the settings hierarchy: its storage quota
/// (<c>max-storage</c>: uploads that would take the account past it are refused before anything is registered) and
/// its retention (<c>retention</c>: the server's collections keep what the account used that recently).
/// </summary>
public interface IAccountPolicy
{
    /// <summary>The most NAR bytes the account's view may hold (zero: no quota).</summary>
    Task<long> MaxStorageAsync(long account, CancellationToken cancellationToken);

    /// <summary>How long after its last use a path is kept by the server's collections though nothing roots it (zero: the server's keep-recent only).</summary>
    Task<TimeSpan> RetentionAsync(long account, CancellationToken cancellationToken);

    /// <summary>How many of the account's latest successful builds keep their outputs in the server's collections (zero: none).</summary>
    Task<int> RetainedBuildsAsync(long account, CancellationToken cancellationToken) => Task.FromResult(0);
}
