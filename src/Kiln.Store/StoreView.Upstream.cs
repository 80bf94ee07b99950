using Kiln.Nix.StorePaths;
using Kiln.Store.Blobs;
using Kiln.Store.Upstream;

namespace Kiln.Store;

// Substituting from the account's upstream caches (see UpstreamSubstituter).
public sealed partial class StoreView
{
    private UpstreamPlan? _plan;

    internal IBlobStore Blobs => _store.Blobs;

    /// <summary>Where warnings about upstream caches go when the caller has no client to tell (they are logged).</summary>
    public Action<string> Warnings { get; set; } = _ => { };

    /// <summary>Whether a path in this view has that NAR (so its bytes are this account's to read under another path).</summary>
    internal async Task<bool> CanReadNarAsync(Kiln.Nix.Hashing.NixHash narHash, CancellationToken cancellationToken) =>
        await Metadata.FindNarAsync([AccountId], narHash, cancellationToken).ConfigureAwait(false) is not null;

    /// <summary>The account's upstream caches and trusted keys (read once per view).</summary>
    public async Task<UpstreamPlan> UpstreamPlanAsync(CancellationToken cancellationToken)
    {
        if (_plan is null)
        {
            var settings = await Metadata.GetUpstreamSettingsAsync(AccountId, cancellationToken).ConfigureAwait(false);
            _plan = UpstreamPlan.Resolve(settings, _store.Options, Warnings);
        }

        return _plan;
    }

    /// <summary>
    /// Substitutes what it can of <paramref name="paths"/> from the account's upstream caches; returns those valid in
    /// the view afterwards. Failures are warnings (to <paramref name="warn"/>, or <see cref="Warnings"/>).
    /// </summary>
    public async Task<IReadOnlySet<StorePath>> SubstituteAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken, Action<string>? warn = null)
    {
        var plan = await UpstreamPlanAsync(cancellationToken).ConfigureAwait(false);
        var valid = await _store.Upstream.SubstituteAsync(this, plan, paths, warn ?? Warnings, cancellationToken).ConfigureAwait(false);
        foreach (var path in valid)
        {
            AddTempRoot(path);
        }

        return valid;
    }

    // What QueryMissing reports for outputs an upstream cache has: their download and NAR sizes, or null if any is missing there.
    private async Task<(long Download, long Nar)?> SubstitutableAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        var plan = await UpstreamPlanAsync(cancellationToken).ConfigureAwait(false);
        if (plan.Caches.Count == 0)
        {
            return null;
        }

        long download = 0, nar = 0;
        foreach (var path in paths)
        {
            if (await _store.Upstream.LookupAsync(plan, path, Warnings, cancellationToken).ConfigureAwait(false) is not { Info: var info })
            {
                return null;
            }

            download += info.FileSize ?? info.NarSize;
            nar += info.NarSize;
        }

        return (download, nar);
    }
}
