using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store.Blobs;
using Kiln.Store.Metadata;
using Kiln.Store.Upstream;

namespace Kiln.Store;

// Substituting from the account's upstream caches (see UpstreamSubstituter).
public sealed partial class StoreView
{
    private UpstreamPlan? _plan;

    internal IBlobStore Blobs => _store.Blobs;

    // Warnings about upstream caches go to the client (when there is one) and to the operator's log.
    private Action<string> Logged(Action<string>? warn) => message =>
    {
        StoreLog.SubstitutionWarning(_store.Options.Logger, Caller.AccountName ?? "-", message);
        warn?.Invoke(message);
    };

    /// <summary>Whether a path in this view has that NAR (so its bytes are this account's to read under another path).</summary>
    internal async Task<bool> CanReadNarAsync(Kiln.Nix.Hashing.NixHash narHash, CancellationToken cancellationToken) =>
        await Metadata.FindNarAsync([AccountId], narHash, cancellationToken).ConfigureAwait(false) is not null;

    /// <summary>The account's upstream caches and trusted keys (read once per view).</summary>
    public async Task<UpstreamPlan> UpstreamPlanAsync(Action<string> warn, CancellationToken cancellationToken)
    {
        if (_plan is null)
        {
            UpstreamSettings settings;
            try
            {
                settings = await _store.Settings.GetUpstreamSettingsAsync(AccountId, cancellationToken).ConfigureAwait(false);
            }
            catch (KilnException e)
            {
                // (Credentials sealed with another key: the caches are still used, without them.)
                warn(e.Message);
                settings = (await Metadata.GetUpstreamSettingsAsync(AccountId, cancellationToken).ConfigureAwait(false)) with { Netrc = "" };
            }

            _plan = UpstreamPlan.Resolve(settings, _store.Options, warn);
        }

        return _plan;
    }

    /// <summary>
    /// Substitutes what it can of <paramref name="paths"/>, from the stores of the accounts this one trusts (where they
    /// share with it) and then from the account's upstream caches; returns those valid in the view afterwards.
    /// Failures are warnings (to <paramref name="warn"/>).
    /// </summary>
    public async Task<IReadOnlySet<StorePath>> SubstituteAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken, Action<string>? warn = null)
    {
        ArgumentNullException.ThrowIfNull(paths);
        await TakeSharedAsync(paths, cancellationToken).ConfigureAwait(false);
        return await SubstituteFromUpstreamAsync(paths, cancellationToken, warn).ConfigureAwait(false);
    }

    /// <summary>
    /// Substitutes what it can of <paramref name="paths"/> from the account's upstream caches alone (for a caller that
    /// has just taken what the trusted accounts give, <see cref="TakeSharedAsync"/>); returns those valid in the view
    /// afterwards.
    /// </summary>
    public async Task<IReadOnlySet<StorePath>> SubstituteFromUpstreamAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken, Action<string>? warn = null)
    {
        var both = Logged(warn);
        var plan = await UpstreamPlanAsync(both, cancellationToken).ConfigureAwait(false);
        var valid = await _store.Upstream.SubstituteAsync(this, plan, paths, both, cancellationToken).ConfigureAwait(false);
        await HoldAsync(valid.ToList(), cancellationToken).ConfigureAwait(false);

        return valid;
    }

    // What QueryMissing reports for outputs a trusted account's store or an upstream cache has: their download and NAR
    // sizes, or null if any is missing there. The lookups run at once (the substituter remembers answers, so a level's
    // shared outputs cost one).
    private async Task<(long Download, long Nar)?> SubstitutableAsync(IReadOnlyCollection<StorePath> paths, Action<string> warn, CancellationToken cancellationToken)
    {
        if (await ShareableAsync(paths, cancellationToken).ConfigureAwait(false) is { } shared)
        {
            return (0, shared); // (nothing to download: the content is here)
        }

        warn = Logged(warn);
        var plan = await UpstreamPlanAsync(warn, cancellationToken).ConfigureAwait(false);
        if (plan.Caches.Count == 0)
        {
            return null;
        }

        var found = await Task.WhenAll(paths.Select(path => _store.Upstream.LookupAsync(plan, path, warn, cancellationToken))).ConfigureAwait(false);
        if (found.Any(f => f is null))
        {
            return null;
        }

        return (found.Sum(f => f!.Value.Info.FileSize ?? f!.Value.Info.NarSize), found.Sum(f => f!.Value.Info.NarSize));
    }
}
