namespace Kiln.Store;

/// <summary>
/// Where the store learns an account's storage quota (the settings hierarchy's <c>max-storage</c>, which lives above
/// the store): uploads that would take the account past it are refused before anything is registered.
/// </summary>
public interface IStorageQuota
{
    /// <summary>The most NAR bytes the account's view may hold (zero: no quota).</summary>
    Task<long> MaxStorageAsync(long account, CancellationToken cancellationToken);
}
