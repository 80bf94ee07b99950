using Kiln.Nix.StorePaths;
using Kiln.Protocol;
using Kiln.Store.Metadata;

namespace Kiln.Store;

/// <summary>
/// Pins: named roots an account keeps through Kiln rather than through Nix (<c>kiln pin</c>, the SSH shell, the API):
/// the path and its closure stay in the account's store until the pin is removed, whatever retention or garbage
/// collection would do. They are roots of kind <see cref="RootKind.Pin"/> in the metadata, honoured by the collector
/// like Nix's permanent roots. Shared by <see cref="StoreView"/> and the operator's commands, which work on the
/// metadata alone (with the server running).
/// </summary>
public static class Pins
{
    /// <summary>The most pins an account keeps (each is a root the collector walks from).</summary>
    public const int Max = 10_000;

    /// <summary>
    /// Pins <paramref name="path"/> under <paramref name="name"/> (default: the path's name); a pin of that name is
    /// moved to the path.
    /// </summary>
    /// <exception cref="KilnException">The path is not in the account's store (NotFound); the name is not one line of 1 to 200 printable characters, or the account has <see cref="Max"/> pins (Invalid).</exception>
    public static async Task<PinRecord> AddAsync(IPathMetadata metadata, long account, StorePath path, string? name, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        name ??= path.Name;
        if (name.Length is 0 or > 200 || name.Trim().Length != name.Length || name.Any(Unprintable))
        {
            throw new KilnException(ErrorKind.Invalid, "a pin's name is one line of 1 to 200 printable characters, without spaces around it");
        }

        if ((await metadata.GetPathsAsync(account, [path], cancellationToken).ConfigureAwait(false)).Count == 0)
        {
            throw new KilnException(ErrorKind.NotFound, $"path '{path}' is not in the account's store");
        }

        var pins = await ListAsync(metadata, account, cancellationToken).ConfigureAwait(false);
        if (pins.Count >= Max && !pins.Any(p => p.Name == name))
        {
            throw new KilnException(ErrorKind.Invalid, $"the account has {Max} pins, the most it may keep; remove some first");
        }

        await metadata.AddRootAsync(account, RootKind.Pin, name, path, cancellationToken).ConfigureAwait(false);
        return new PinRecord(name, path);
    }

    // Control, format (direction overrides, zero-width), line and paragraph separators, halves of surrogate pairs: what
    // would make a listing on a terminal or a page show something other than the name.
    private static bool Unprintable(char c) => char.GetUnicodeCategory(c) is System.Globalization.UnicodeCategory.Control or System.Globalization.UnicodeCategory.Format
        or System.Globalization.UnicodeCategory.LineSeparator or System.Globalization.UnicodeCategory.ParagraphSeparator or System.Globalization.UnicodeCategory.Surrogate
        or System.Globalization.UnicodeCategory.OtherNotAssigned;

    /// <summary>The account's pins, by name.</summary>
    public static async Task<IReadOnlyList<PinRecord>> ListAsync(IPathMetadata metadata, long account, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        return [.. (await metadata.GetRootsAsync(account, cancellationToken).ConfigureAwait(false)).Where(r => r.Kind == RootKind.Pin)
            .Select(r => new PinRecord(r.Name, r.Path)).OrderBy(p => p.Name, StringComparer.Ordinal)];
    }

    /// <summary>Removes the pin named <paramref name="name"/>: its path goes at the next collection unless something else holds it.</summary>
    /// <exception cref="KilnException">The account has no such pin (NotFound).</exception>
    public static async Task<PinRecord> RemoveAsync(IPathMetadata metadata, long account, string name, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        var pin = (await ListAsync(metadata, account, cancellationToken).ConfigureAwait(false)).FirstOrDefault(p => p.Name == name)
            ?? throw new KilnException(ErrorKind.NotFound, $"the account has no pin named '{name}'");
        await metadata.RemoveRootAsync(account, RootKind.Pin, name, cancellationToken).ConfigureAwait(false);
        return pin;
    }
}
