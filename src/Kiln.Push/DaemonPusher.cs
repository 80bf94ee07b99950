using Kiln.Nix.Signing;
using Kiln.Nix.StorePaths;
using Kiln.Protocol.Worker;
using Kiln.Store;

namespace Kiln.Push;

/// <summary>
/// Pushes store paths and their closure, minus what the daemon has, into a Nix daemon's store over the worker
/// protocol (as <c>nix copy --to ssh-ng://</c> does): one QueryValidPaths, then AddToStoreNar for each missing path,
/// references first, each with the account's signature added (a daemon that does not trust the account's user
/// accepts what is signed by a key it trusts).
/// </summary>
internal static class DaemonPusher
{
    public static async Task<int> PushAsync(WorkerClient daemon, StoreView view, IReadOnlyList<StorePath> paths, SecretKey key, CancellationToken cancellationToken)
    {
        var closure = await ClosurePusher.ClosureAsync(view, paths, cancellationToken).ConfigureAwait(false);
        var present = await daemon.QueryValidPathsAsync(closure.Keys, cancellationToken).ConfigureAwait(false);
        var ordered = ClosurePusher.ReferencesFirst(closure.Keys.Where(p => !present.Contains(p)).ToHashSet(), closure);
        foreach (var path in ordered)
        {
            var info = closure[path].Info;
            var signature = key.Sign(NarInfo.ComputeFingerprint(info.Path, info.NarHash, info.NarSize, info.References));
            var source = await ClosurePusher.OpenNarAsync(view, info, cancellationToken).ConfigureAwait(false);
            await using (source.ConfigureAwait(false))
            {
                var nar = await source.OpenStreamAsync(cancellationToken).ConfigureAwait(false);
                await daemon.AddToStoreNarAsync(info with { Signatures = new SortedSet<string>(info.Signatures.Append(signature), StringComparer.Ordinal), Ultimate = false },
                    nar, repair: false, cancellationToken).ConfigureAwait(false);
            }
        }

        return ordered.Count;
    }
}
