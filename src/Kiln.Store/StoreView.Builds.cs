using Kiln.Nix.Derivations;
using Kiln.Nix.Nar;
using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store.Metadata;

namespace Kiln.Store;

/// <summary>What the scheduler needs from a view: derivations to read, closures to resolve, outputs to register.</summary>
public sealed partial class StoreView
{
    private const int MaxDerivationSize = 64 << 20;

    /// <summary>Reads and parses a derivation valid in the view.</summary>
    /// <exception cref="KilnException">It is not valid in the view, or not a derivation.</exception>
    public async Task<Derivation> ReadDerivationAsync(StorePath drvPath, CancellationToken cancellationToken)
    {
        var records = await GetRecordsAsync([drvPath], cancellationToken).ConfigureAwait(false);
        if (!records.TryGetValue(drvPath, out var record))
        {
            throw new KilnException(ErrorKind.NotFound, $"path '{drvPath}' is not valid");
        }

        return await ReadDerivationAsync(drvPath, record, cancellationToken).ConfigureAwait(false);
    }

    // Reads a derivation whose record is at hand (no metadata query).
    private async Task<Derivation> ReadDerivationAsync(StorePath drvPath, PathRecord record, CancellationToken cancellationToken)
    {
        var source = await _store.Blobs.OpenReadAsync(record.Info.NarHash, cancellationToken).ConfigureAwait(false)
            ?? throw new KilnException(ErrorKind.Failed, $"the contents of '{drvPath}' are missing from Kiln's store; an operator should run 'kiln store verify'");
        await using (source.ConfigureAwait(false))
        {
            try
            {
                var nar = new BufferedStream(await source.OpenStreamAsync(cancellationToken).ConfigureAwait(false), 64 * 1024);
                var capture = new FileCapture();
                NarReading.Parse(nar, capture);
                return ATerm.Parse(capture.Captured.WrittenSpan, Derivation.NameFromPath(drvPath));
            }
            catch (Exception e) when (e is Kiln.Nix.NixFormatException or IOException or InvalidDataException)
            {
                throw new KilnException(ErrorKind.Invalid, $"'{drvPath}' is not a derivation Kiln can read: {e.Message}");
            }
        }
    }

    /// <summary>The records of every path in the closure of <paramref name="roots"/> that is valid in the view (one query for a view of one account; one per level of the graph over several).</summary>
    public async Task<IReadOnlyDictionary<StorePath, PathRecord>> GetClosureAsync(IEnumerable<StorePath> roots, CancellationToken cancellationToken)
    {
        var frontier = roots.Distinct().ToList();
        if (Readable.Count == 1)
        {
            return await Metadata.GetClosureAsync(Readable[0], frontier, cancellationToken).ConfigureAwait(false);
        }

        // Several accounts (the public caches): each layer resolved as GetRecordsAsync resolves a path among them.
        var closure = new Dictionary<StorePath, PathRecord>();
        while (frontier.Count > 0)
        {
            var records = await GetRecordsAsync(frontier, cancellationToken).ConfigureAwait(false);
            var next = new HashSet<StorePath>();
            foreach (var (path, record) in records)
            {
                closure[path] = record;
            }

            foreach (var record in records.Values)
            {
                foreach (var reference in record.Info.References)
                {
                    if (!closure.ContainsKey(reference))
                    {
                        next.Add(reference);
                    }
                }
            }

            frontier = next.ToList();
        }

        return closure;
    }

    /// <summary>
    /// Registers build outputs whose NARs are already in the blob store (references before referrers, in one
    /// transaction), roots them for this session, and unpacks them where the view is materialised.
    /// </summary>
    private Task<Kiln.Nix.Signing.SecretKey?>? _signingKey;

    // The account's own signing key, read once per view (a session registers outputs for every build it runs;
    // builds running at once may both start the read, which is harmless). Not cancellable: the one read serves
    // every later request of the session, whichever of them is cancelled.
    private Task<Kiln.Nix.Signing.SecretKey?> AccountSigningKeyAsync() => _signingKey ??= ReadSigningKeyAsync();

    private async Task<Kiln.Nix.Signing.SecretKey?> ReadSigningKeyAsync()
    {
        try
        {
            return await _store.Settings.GetSigningKeyAsync(AccountId, CancellationToken.None).ConfigureAwait(false) is { } secret ? Kiln.Nix.Signing.SecretKey.Parse(secret) : null;
        }
        catch (KilnException e)
        {
            // (Sealed with another front door's credentials key: the builds go on, unsigned by the account, and say why.)
            StoreLog.SigningKeyUnreadable(_store.Options.Logger, Caller.AccountName ?? "-", e.Message);
            return null;
        }
    }

    public async Task RegisterOutputsAsync(IReadOnlyList<NewPath> outputs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(outputs);
        // The account's own key (if it has one) signs what Kiln built for it from a derivation whose output paths it
        // checked and from inputs the account trusts: "Kiln built this, from what we trust". Not outputs of a bare
        // BuildDerivation (paths the client chose) nor of untrusted inputs (registered Untrusted).
        if (await AccountSigningKeyAsync().ConfigureAwait(false) is { } key)
        {
            outputs = outputs.Select(o => o.Provenance != Provenance.Built || !o.Trust.IsTrustedByAccount() ? o : o with
            {
                Info = o.Info with
                {
                    Signatures = new SortedSet<string>(o.Info.Signatures.Append(key.Sign(Kiln.Nix.Signing.NarInfo.ComputeFingerprint(
                        o.Info.Path, o.Info.NarHash, o.Info.NarSize, o.Info.References))), StringComparer.Ordinal),
                },
            }).ToList();
        }

        await RegisterPresentAsync(outputs, cancellationToken).ConfigureAwait(false);
    }

    // Registers paths whose NARs are already in the blob store (built, or another view's), roots them for this
    // session, and unpacks them where the view is materialised.
    private async Task RegisterPresentAsync(IReadOnlyList<NewPath> outputs, CancellationToken cancellationToken)
    {
        var shared = await _store.GcLock.SharedAsync(cancellationToken).ConfigureAwait(false);
        await using var _ = shared.ConfigureAwait(false);

        // Under the lock that keeps the collector out: a blob seen before it (a build reused, or built and not yet
        // registered) may have been swept since, when the last path naming it went; a path must never be valid without it.
        foreach (var output in outputs)
        {
            if (!await _store.Blobs.HasAsync(output.Info.NarHash, cancellationToken).ConfigureAwait(false))
            {
                throw new ContentGoneException(output.Info.Path);
            }
        }

        try
        {
            await Metadata.RegisterAsync(AccountId, outputs, cancellationToken).ConfigureAwait(false);
        }
        catch (MissingReferencesException e)
        {
            throw new KilnException(ErrorKind.Invalid, e.Message);
        }

        await HoldAsync(outputs.Select(o => o.Info.Path).ToList(), cancellationToken, lockHeld: true).ConfigureAwait(false);

        if (_store.MaterialisedFor(AccountId) is { } tree)
        {
            await tree.AddAsync(outputs.Select(o => (o.Info.Path, o.Info.NarHash)), cancellationToken).ConfigureAwait(false);
        }
    }

    private sealed class FileCapture : NarVisitor
    {
        public System.Buffers.ArrayBufferWriter<byte> Captured { get; } = new();

        public override void RegularFile(bool executable, long size, long contentsOffset)
        {
            if (size > MaxDerivationSize)
            {
                throw new InvalidDataException($"it is {size} bytes long");
            }
        }

        public override void Contents(ReadOnlySpan<byte> data) => System.Buffers.BuffersExtensions.Write(Captured, data);

        public override void Directory() => throw new InvalidDataException("it is a directory");

        public override void Symlink(ReadOnlySpan<byte> target) => throw new InvalidDataException("it is a symlink");
    }
}

/// <summary>A build output's content was collected before the output could be registered: the build must run again.</summary>
public sealed class ContentGoneException(StorePath path)
    : Exception($"the content of '{path}' was garbage-collected before it was registered")
{
    public StorePath Path { get; } = path;
}
