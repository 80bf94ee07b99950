using Kiln.Nix.Hashing;
using Kiln.Store.Blobs;

namespace Kiln.Store;

// What the HTTP binary cache needs beyond the worker protocol's reads: compressed NARs kept as clients uploaded them.
public sealed partial class StoreView
{
    /// <summary>A compressed NAR kept as an HTTP client uploaded it, readable by whoever may read the NAR it holds; null otherwise.</summary>
    public async Task<BlobSource?> OpenKeptNarFileAsync(string name, CancellationToken cancellationToken)
    {
        if (await Metadata.FindNarFileAsync(name, cancellationToken).ConfigureAwait(false) is not { } kept
            || await Metadata.FindNarAsync(Readable, kept.NarHash, cancellationToken).ConfigureAwait(false) is null)
        {
            return null;
        }

        return await _store.KeptNarFiles.OpenAsync(name, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Keeps the compressed file an upload of <paramref name="narHash"/> (now in this view) came in, under the name
    /// the uploader's narinfo cache knows it by; false, and nothing kept, when the name is not the file's SHA-256.
    /// </summary>
    public async Task<bool> KeepNarFileAsync(string name, NixHash narHash, string compression, Stream file, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (await Metadata.FindNarAsync([AccountId], narHash, cancellationToken).ConfigureAwait(false) is null
            || !await _store.KeptNarFiles.KeepAsync(name, file, cancellationToken).ConfigureAwait(false))
        {
            return false;
        }

        await Metadata.AddNarFileAsync(name, narHash, compression, file.Length, cancellationToken).ConfigureAwait(false);
        return true;
    }
}
