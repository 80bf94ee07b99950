using Kiln.Nix;
using Kiln.Nix.StorePaths;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Store;

// Taking paths from the stores of accounts this one trusts and that share with it (see AccountSharing).
public sealed partial class StoreView
{
    private Task<IReadOnlyList<AccountRecord>>? _sharing;

    /// <summary>
    /// The accounts this view may take paths from, first preferred: those its <c>trusted-accounts</c> names that name
    /// it in their <c>share-with</c>. Read once per view (a session), as its other settings are; not cancellable, as
    /// the one read serves every later request of the session.
    /// </summary>
    private Task<IReadOnlyList<AccountRecord>> SharingAccountsAsync() => _sharing ??= ReadSharingAccountsAsync();

    private async Task<IReadOnlyList<AccountRecord>> ReadSharingAccountsAsync()
    {
        if (Caller.AccountId is not { } self || Caller.AccountName is not { } name)
        {
            return [];
        }

        var trusted = AccountSharing.NamesOf(SettingOf(await Metadata.GetSettingsAsync(self, CancellationToken.None).ConfigureAwait(false), AccountSharing.TrustedAccounts));
        var sources = new List<AccountRecord>();
        foreach (var other in trusted.Where(t => t != name))
        {
            if (await Metadata.FindAccountAsync(other, CancellationToken.None).ConfigureAwait(false) is { } account
                && AccountSharing.NamesOf(SettingOf(await Metadata.GetSettingsAsync(account.Id, CancellationToken.None).ConfigureAwait(false), AccountSharing.ShareWith)).Contains(name))
            {
                sources.Add(account);
            }
        }

        return sources;
    }

    private static string? SettingOf(IReadOnlyList<SettingRecord> settings, string setting) =>
        settings.FirstOrDefault(s => s.Scope.Length == 0 && s.Name == setting)?.Value;

    // The records of the missing closure of paths in the sharing accounts' views (the first that has each), and the
    // paths none of them has. Paths this view holds already are not looked up.
    private async Task<(Dictionary<StorePath, (AccountRecord From, PathRecord Record)> Found, HashSet<StorePath> Unavailable)> SharedClosureAsync(
        IReadOnlyList<AccountRecord> sources, IEnumerable<StorePath> paths, bool closure, CancellationToken cancellationToken)
    {
        var found = new Dictionary<StorePath, (AccountRecord, PathRecord)>();
        var unavailable = new HashSet<StorePath>();
        var frontier = paths.Distinct().ToList();
        while (frontier.Count > 0)
        {
            var present = await QueryValidPathsAsync(frontier, cancellationToken).ConfigureAwait(false);
            var wanted = frontier.Where(p => !present.Contains(p) && !found.ContainsKey(p) && !unavailable.Contains(p)).ToList();
            var next = new List<StorePath>();
            foreach (var source in sources)
            {
                if (wanted.Count == 0)
                {
                    break;
                }

                var records = await Metadata.GetPathsAsync(source.Id, wanted, cancellationToken).ConfigureAwait(false);
                foreach (var (path, record) in records)
                {
                    found[path] = (source, record);
                    next.AddRange(record.Info.References.Where(r => r != path));
                }

                wanted = wanted.Where(p => !records.ContainsKey(p)).ToList();
            }

            unavailable.UnionWith(wanted);
            frontier = closure ? next.Distinct().ToList() : [];
        }

        return (found, unavailable);
    }

    /// <summary>
    /// Takes what it can of <paramref name="paths"/> (each with its whole missing closure) from the stores of the
    /// accounts this one trusts and that share with it; returns the paths taken, each with the account it came from.
    /// The content is already in the blob store: only records are added (provenance shared), with the sharer's
    /// signatures; a path globally trusted there stays so, any other is trusted by this account alone.
    /// </summary>
    public async Task<IReadOnlyDictionary<StorePath, string>> TakeSharedAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var sources = await SharingAccountsAsync().ConfigureAwait(false);
        if (sources.Count == 0 || paths.Count == 0)
        {
            return new Dictionary<StorePath, string>();
        }

        var (found, unavailable) = await SharedClosureAsync(sources, paths, closure: true, cancellationToken).ConfigureAwait(false);
        if (found.Count == 0)
        {
            return new Dictionary<StorePath, string>();
        }

        // References first; a path whose closure cannot be completed is not taken (nor is what refers to it).
        var failed = new HashSet<StorePath>(unavailable);
        var taken = new List<StorePath>();
        foreach (var path in Graph.Order(found.Keys, p => found[p].Record.Info.References.Where(r => r != p), found.Keys.ToHashSet()))
        {
            if (found[path].Record.Info.References.Any(failed.Contains))
            {
                failed.Add(path);
            }
            else
            {
                taken.Add(path);
            }
        }

        var outputs = new Dictionary<StorePath, IReadOnlyDictionary<string, StorePath?>>();
        foreach (var group in taken.Where(p => p.IsDerivation).GroupBy(p => found[p].From.Id))
        {
            foreach (var (drv, declared) in await Metadata.GetDerivationOutputsAsync(group.Key, group.ToList(), cancellationToken).ConfigureAwait(false))
            {
                outputs[drv] = declared;
            }
        }

        var records = taken.Select(p =>
        {
            var record = found[p].Record;
            return new NewPath(record.Info with { Ultimate = false }, Provenance.Shared, record.Trust.IsGlobal() ? record.Trust : PathTrust.TrustedAccount, outputs.GetValueOrDefault(p));
        }).ToList();
        try
        {
            await RegisterPresentAsync(records, cancellationToken).ConfigureAwait(false);
        }
        catch (ContentGoneException)
        {
            // (The sharer's paths were collected meanwhile: nothing is taken, the caller substitutes or builds.)
            return new Dictionary<StorePath, string>();
        }

        return taken.ToDictionary(p => p, p => found[p].From.Name);
    }

    // What QueryMissing reports for paths the sharing accounts have: their NAR sizes, or null if any is missing there.
    private async Task<long?> ShareableAsync(IReadOnlyCollection<StorePath> paths, CancellationToken cancellationToken)
    {
        var sources = await SharingAccountsAsync().ConfigureAwait(false);
        if (sources.Count == 0)
        {
            return null;
        }

        var (found, unavailable) = await SharedClosureAsync(sources, paths, closure: false, cancellationToken).ConfigureAwait(false);
        return unavailable.Count == 0 ? found.Values.Sum(f => f.Record.Info.NarSize) : null;
    }
}
