using Kiln.Nix;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Store;

// Taking paths from the stores of accounts this one trusts and that share with it (see AccountSharing).
public sealed partial class StoreView
{
    // How long a view goes by what it read of the sharing settings: a share withdrawn holds within this.
    private static readonly TimeSpan SharingLifetime = TimeSpan.FromSeconds(10);

    // (A reference swapped whole: QueryMissing asks from several tasks at once.)
    private SharingRead? _sharing;

    private sealed record SharingRead(IReadOnlyList<AccountRecord> Accounts, DateTime Until);

    /// <summary>
    /// The accounts this view may take paths from, first preferred: those its <c>trusted-accounts</c> names that name
    /// it in their <c>share-with</c>. Read again after <see cref="SharingLifetime"/> (a long session must notice a share
    /// withdrawn); a failed read is not remembered.
    /// </summary>
    private async Task<IReadOnlyList<AccountRecord>> SharingAccountsAsync(CancellationToken cancellationToken)
    {
        if (_sharing is { } known && known.Until > DateTime.UtcNow)
        {
            return known.Accounts;
        }

        if (Caller.AccountId is not { } self || Caller.AccountName is not { } name)
        {
            return [];
        }

        var trusted = AccountSharing.NamesOf(SettingOf(await Metadata.GetSettingsAsync(self, cancellationToken).ConfigureAwait(false), AccountSharing.TrustedAccounts));
        var sources = new List<AccountRecord>();
        foreach (var other in trusted.Where(t => t != name))
        {
            if (await Metadata.FindAccountAsync(other, cancellationToken).ConfigureAwait(false) is { } account
                && AccountSharing.NamesOf(SettingOf(await Metadata.GetSettingsAsync(account.Id, cancellationToken).ConfigureAwait(false), AccountSharing.ShareWith)).Contains(name))
            {
                sources.Add(account);
            }
        }

        _sharing = new SharingRead(sources, DateTime.UtcNow + SharingLifetime);
        return sources;
    }

    private static string? SettingOf(IReadOnlyList<SettingRecord> settings, string setting) =>
        settings.FirstOrDefault(s => s.Scope.Length == 0 && s.Name == setting)?.Value;

    /// <summary>What may be taken of some paths: the records in order (references first), each with its account.</summary>
    private sealed record SharePlan(IReadOnlyList<(StorePath Path, AccountRecord From, PathRecord Record)> Taken, IReadOnlyList<StorePath> Present);

    // Which of the missing closure of paths the sharing accounts' views have (the first that has each), references
    // first; a path whose closure cannot be completed is left out with what refers to it. A sharer gives what it
    // uploaded, built or fetched itself, never what it took from another account (that one shared with it, not with
    // this one). Also the paths of the closure this view holds already (to hold while the rest is registered).
    private async Task<SharePlan> PlanSharingAsync(IReadOnlyList<AccountRecord> sources, IEnumerable<StorePath> paths, CancellationToken cancellationToken)
    {
        var found = new Dictionary<StorePath, (AccountRecord From, PathRecord Record)>();
        var unavailable = new HashSet<StorePath>();
        var present = new HashSet<StorePath>();
        var frontier = paths.Distinct().ToList();
        while (frontier.Count > 0)
        {
            var valid = await QueryValidPathsAsync(frontier, cancellationToken).ConfigureAwait(false);
            present.UnionWith(valid);
            var wanted = frontier.Where(p => !valid.Contains(p) && !found.ContainsKey(p) && !unavailable.Contains(p)).ToList();
            var next = new List<StorePath>();
            foreach (var source in sources)
            {
                if (wanted.Count == 0)
                {
                    break;
                }

                var records = (await Metadata.GetPathsAsync(source.Id, wanted, cancellationToken).ConfigureAwait(false))
                    .Where(r => r.Value.Provenance != Provenance.Shared)
                    .ToDictionary();
                foreach (var (path, record) in records)
                {
                    found[path] = (source, record);
                    next.AddRange(record.Info.References.Where(r => r != path));
                }

                wanted = wanted.Where(p => !records.ContainsKey(p)).ToList();
            }

            unavailable.UnionWith(wanted);
            frontier = next.Distinct().ToList();
        }

        var failed = new HashSet<StorePath>(unavailable);
        var taken = new List<(StorePath, AccountRecord, PathRecord)>();
        foreach (var path in Graph.Order(found.Keys, p => found[p].Record.Info.References.Where(r => r != p), found.Keys.ToHashSet()))
        {
            if (found[path].Record.Info.References.Any(failed.Contains))
            {
                failed.Add(path);
            }
            else
            {
                taken.Add((path, found[path].From, found[path].Record));
            }
        }

        return new SharePlan(taken, [.. present]);
    }

    /// <summary>
    /// Takes what it can of <paramref name="paths"/> (each with its whole missing closure) from the stores of the
    /// accounts this one trusts and that share with it; returns the paths taken, each with the account it came from.
    /// The content is already in the blob store: only records are added (provenance shared, registered now, used now),
    /// with the sharer's signatures; a path globally trusted there stays so, any other is trusted by this account
    /// alone. Nothing taken is not an error: the caller goes on to the upstream caches, or builds.
    /// </summary>
    public async Task<IReadOnlyDictionary<StorePath, string>> TakeSharedAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var sources = paths.Count == 0 ? [] : await SharingAccountsAsync(cancellationToken).ConfigureAwait(false);
        if (sources.Count == 0)
        {
            return new Dictionary<StorePath, string>();
        }

        var plan = await PlanSharingAsync(sources, paths, cancellationToken).ConfigureAwait(false);
        if (plan.Taken.Count == 0)
        {
            return new Dictionary<StorePath, string>();
        }

        var outputs = new Dictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>();
        foreach (var group in plan.Taken.Where(t => t.Path.IsDerivation).GroupBy(t => t.From.Id))
        {
            foreach (var (drv, declared) in await Metadata.GetDerivationOutputsAsync(group.Key, group.Select(t => t.Path).ToList(), cancellationToken).ConfigureAwait(false))
            {
                outputs[drv] = declared;
            }
        }

        var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var records = plan.Taken.Select(t => new NewPath(t.Record.Info with { Ultimate = false, RegistrationTime = now }, Provenance.Shared,
            t.Record.Trust.IsGlobal() ? t.Record.Trust : PathTrust.TrustedAccount, outputs.GetValueOrDefault(t.Path))).ToList();
        try
        {
            // What the closure needs of this view's own paths is held first, so a collection cannot take it in between.
            await HoldAsync(plan.Present, cancellationToken).ConfigureAwait(false);
            await RegisterPresentAsync(records, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is ContentGoneException or KilnException)
        {
            // (The sharer's paths were collected meanwhile, or this view's changed: nothing is taken.)
            return new Dictionary<StorePath, string>();
        }

        MarkUsed(records.Select(r => r.Info.Path));
        return plan.Taken.ToDictionary(t => t.Path, t => t.From.Name);
    }

    // What QueryMissing reports for paths the sharing accounts can give whole (with their closures): their NAR sizes,
    // or null if any cannot be taken.
    private async Task<long?> ShareableAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        var sources = await SharingAccountsAsync(cancellationToken).ConfigureAwait(false);
        if (sources.Count == 0)
        {
            return null;
        }

        var taken = (await PlanSharingAsync(sources, paths, cancellationToken).ConfigureAwait(false)).Taken.ToDictionary(t => t.Path, t => t.Record);
        return paths.All(taken.ContainsKey) ? paths.Sum(p => taken[p].Info.NarSize) : null;
    }
}
