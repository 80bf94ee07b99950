using Kiln.Nix.StorePaths;
using Kiln.Store.Metadata;

namespace Kiln.Store;

// Builds and their logs, as far as this caller may see them: the builds its readable accounts were for (started,
// joined, or reused). A log belongs to its build; knowing a .drv path gives nobody another account's log.
public sealed partial class StoreView
{
    /// <summary>How many paths the caller's own view holds and their NAR bytes.</summary>
    public async Task<(int Paths, long NarBytes)> StorageAsync(CancellationToken cancellationToken)
    {
        var (paths, narBytes) = await Metadata.GetStorageAsync(AccountId, cancellationToken).ConfigureAwait(false);
        return ((int)Math.Min(int.MaxValue, paths), narBytes);
    }

    /// <summary>The caller's own view's storage samples for days <paramref name="fromDay"/> to before <paramref name="toDay"/> (Unix days).</summary>
    public Task<IReadOnlyList<StorageSample>> StorageHistoryAsync(long fromDay, long toDay, CancellationToken cancellationToken) =>
        Metadata.GetStorageHistoryAsync(AccountId, fromDay, toDay, cancellationToken);

    /// <summary>The build with that id, if it was for one of the readable accounts.</summary>
    public async Task<BuildRecord?> GetBuildAsync(long id, CancellationToken cancellationToken)
    {
        foreach (var account in Readable)
        {
            if (await Metadata.GetBuildAsync(account, id, cancellationToken).ConfigureAwait(false) is { } build)
            {
                return build;
            }
        }

        return null;
    }

    /// <summary>The latest builds for the readable accounts, newest first.</summary>
    /// <summary>The pushes of the account's builds' outputs to its push-to caches, newest first: one build's (<paramref name="build"/> other than 0) or all.</summary>
    public Task<IReadOnlyList<PushRecord>> PushesAsync(long build, int limit, CancellationToken cancellationToken) =>
        Metadata.GetPushesAsync(AccountId, build, limit, cancellationToken);

    public Task<IReadOnlyList<BuildRecord>> ListBuildsAsync(int limit, CancellationToken cancellationToken) =>
        ListBuildsAsync(new BuildQuery { Limit = limit }, cancellationToken);

    /// <summary>The builds for the readable accounts that <paramref name="query"/> selects, newest first.</summary>
    public async Task<IReadOnlyList<BuildRecord>> ListBuildsAsync(BuildQuery query, CancellationToken cancellationToken)
    {
        var builds = new List<BuildRecord>();
        foreach (var account in Readable)
        {
            builds.AddRange(await Metadata.ListBuildsAsync(account, query, cancellationToken).ConfigureAwait(false));
        }

        return Readable.Count == 1 ? builds : builds.DistinctBy(b => b.Id).OrderByDescending(b => b.Id).Take(query.Limit).ToList();
    }

    /// <summary>A build's log (as far as it is written), if the build was for one of the readable accounts and has one.</summary>
    public async Task<Stream?> OpenBuildLogAsync(long id, CancellationToken cancellationToken) =>
        await GetBuildAsync(id, cancellationToken).ConfigureAwait(false) is null
            ? null
            : await _store.Logs.OpenReadAsync(id, 0, cancellationToken).ConfigureAwait(false);

    /// <summary>The log of the latest build of <paramref name="drvPath"/> for one of the readable accounts (a successful one first), as <c>nix log</c> wants it.</summary>
    public async Task<Stream?> OpenDerivationLogAsync(StorePath drvPath, CancellationToken cancellationToken) =>
        await Metadata.FindLatestBuildAsync(Readable, drvPath.BaseName, cancellationToken).ConfigureAwait(false) is { } build
            ? await _store.Logs.OpenReadAsync(build.Id, 0, cancellationToken).ConfigureAwait(false)
            : null;
}
