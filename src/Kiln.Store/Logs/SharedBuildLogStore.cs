using Kiln.Store.Blobs;

namespace Kiln.Store.Logs;

/// <summary>
/// The build logs of several front doors: each front door writes and follows the logs of the builds it runs in its
/// own directory (<see cref="FileBuildLogStore"/>, live), and puts each log, once its build ended, in the bucket they
/// share (<see cref="ISharedFiles"/>). A log this front door does not have — the build ran on another — is fetched from
/// there once and kept beside its own. Names carry the installation's id (<c>logs/&lt;installation&gt;/&lt;id&gt;.log</c>). So a client of any front door reads the log of any build
/// it may read, live where the build runs, and from its end everywhere else.
/// </summary>
public sealed class SharedBuildLogStore(FileBuildLogStore local, ISharedFiles shared, string installation) : IBuildLogStore
{
    // Under the installation's id: build ids restart with a reset database, and a bucket may be given to another
    // installation; neither may show an old log as a new build's.
    private string NameOf(long buildId) => NameOf(installation, buildId);

    internal static string NameOf(string installation, long buildId) => $"logs/{installation}/{buildId.ToString(System.Globalization.CultureInfo.InvariantCulture)}.log";

    public IBuildLogWriter Create(long buildId) => local.Create(buildId);

    public async Task SealAsync(long buildId, CancellationToken cancellationToken)
    {
        var file = local.FileOf(buildId);
        if (File.Exists(file))
        {
            await shared.PutFileAsync(NameOf(buildId), file, cancellationToken).ConfigureAwait(false);
        }
    }

    public async Task<Stream?> OpenReadAsync(long buildId, long offset, CancellationToken cancellationToken) =>
        await local.OpenReadAsync(buildId, offset, cancellationToken).ConfigureAwait(false)
        ?? (await FetchAsync(buildId, cancellationToken).ConfigureAwait(false) ? await local.OpenReadAsync(buildId, offset, cancellationToken).ConfigureAwait(false) : null);

    public async Task DeleteAsync(long buildId, CancellationToken cancellationToken)
    {
        await local.DeleteAsync(buildId, cancellationToken).ConfigureAwait(false);
        await shared.DeleteFileAsync(NameOf(buildId), cancellationToken).ConfigureAwait(false);
    }

    public async IAsyncEnumerable<string> FollowAsync(long buildId, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        if (!File.Exists(local.FileOf(buildId)))
        {
            await FetchAsync(buildId, cancellationToken).ConfigureAwait(false);
        }

        await foreach (var line in local.FollowAsync(buildId, cancellationToken).ConfigureAwait(false))
        {
            yield return line;
        }
    }

    // Into a file of its own first, then renamed into place: a reader never sees half a log, and two fetching at once
    // both end with the whole one.
    private async Task<bool> FetchAsync(long buildId, CancellationToken cancellationToken)
    {
        var file = local.FileOf(buildId);
        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        var partial = $"{file}.{Guid.NewGuid():N}.part";
        try
        {
            if (!await shared.GetFileAsync(NameOf(buildId), partial, cancellationToken).ConfigureAwait(false))
            {
                return false;
            }

            File.Move(partial, file, overwrite: true);
            return true;
        }
        finally
        {
            File.Delete(partial);
        }
    }
}
