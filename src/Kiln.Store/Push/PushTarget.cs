using Kiln.Nix.Compression;
using Kiln.Protocol;

namespace Kiln.Store.Push;

/// <summary>What kind of binary cache a push goes to.</summary>
public enum PushTargetKind
{
    /// <summary>A directory on the server's machine (<c>file:///…</c>), under a root the operator allows.</summary>
    File,

    /// <summary>A binary cache that accepts HTTP PUT (<c>http(s)://…</c>: nginx WebDAV, a cache service).</summary>
    Http,

    /// <summary>An S3 bucket (<c>s3://BUCKET/PREFIX?endpoint=…&amp;region=…</c>).</summary>
    S3,
}

/// <summary>
/// One of an account's <c>push-to</c> binary caches, as its owner writes it: a URL with Nix's store parameters
/// <c>compression</c> (<c>xz</c> by default, as Nix; <c>zstd</c>, <c>none</c>) and <c>compression-level</c>, and for S3
/// <c>region</c>, <c>endpoint</c> and <c>path_style</c>. No credentials: a URL is shown in listings and build records,
/// so user names, passwords and access keys come from the account's netrc (the <c>machine</c> of the URL's host; for
/// S3 the endpoint's host, <c>login</c> the access key id, <c>password</c> the secret).
/// </summary>
public sealed record PushTarget(string Url, PushTargetKind Kind, Uri Location, string Compression, int? CompressionLevel)
{
    private static readonly string[] CommonParameters = ["compression", "compression-level"];
    private static readonly string[] S3Parameters = ["region", "endpoint", "path_style"];

    /// <summary>The location without Kiln's parameters (an S3 location keeps its own).</summary>
    public string Base { get; private init; } = "";

    /// <summary>Parses one target.</summary>
    /// <exception cref="KilnException">It is not one Kiln pushes to (Invalid); the message does not repeat the URL's query, which may hold a mistyped secret.</exception>
    public static PushTarget Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri))
        {
            throw Invalid("is not a URL");
        }

        if (uri.IsUnc)
        {
            throw Invalid("is not a file:/// URL of an absolute directory");
        }

        var kind = uri.Scheme switch
        {
            "file" => PushTargetKind.File,
            "http" or "https" => PushTargetKind.Http,
            "s3" => PushTargetKind.S3,
            "ssh" or "ssh-ng" => throw Invalid("is an SSH store: Kiln pushes to file://, http(s):// and s3:// binary caches"),
            _ => throw Invalid("is not a file://, http(s):// or s3:// binary cache"),
        };
        if (uri.UserInfo.Length > 0)
        {
            throw Invalid("carries credentials: put them in the account's netrc (kiln account settings --netrc), where they are not shown");
        }

        if (uri.Fragment.Length > 0)
        {
            throw Invalid("has a fragment (#…)");
        }

        if (kind == PushTargetKind.File && (uri.Host.Length > 0 || !Path.IsPathFullyQualified(uri.LocalPath) || uri.LocalPath.Split('/').Contains("..")))
        {
            throw Invalid("is not a file:/// URL of an absolute directory");
        }

        if (kind != PushTargetKind.File && uri.Host.Length == 0)
        {
            throw Invalid("names no host");
        }

        var compression = "xz";
        int? level = null;
        var kept = new List<string>();
        foreach (var pair in uri.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var equals = pair.IndexOf('=', StringComparison.Ordinal);
            var name = Uri.UnescapeDataString(equals < 0 ? pair : pair[..equals]);
            var value = equals < 0 ? "" : Uri.UnescapeDataString(pair[(equals + 1)..]);
            if (name == "compression")
            {
                compression = Compressors.Methods.Contains(value) ? value : throw Invalid($"asks for compression '{Short(value)}' (Kiln writes {string.Join(", ", Compressors.Methods)})");
            }
            else if (name == "compression-level")
            {
                level = int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var l) ? l : throw Invalid("has a compression-level that is not a number");
            }
            else if (kind == PushTargetKind.S3 && S3Parameters.Contains(name))
            {
                kept.Add(pair);
            }
            else
            {
                throw Invalid($"has the parameter '{Short(name)}', which Kiln does not know here (it knows {string.Join(", ", kind == PushTargetKind.S3 ? [.. CommonParameters, .. S3Parameters] : CommonParameters)})");
            }
        }

        if (level is { } chosen && !Compressors.IsLevel(compression, chosen))
        {
            throw Invalid($"asks for {compression} level {chosen}");
        }

        var path = uri.GetComponents(UriComponents.SchemeAndServer | UriComponents.Path, UriFormat.UriEscaped).TrimEnd('/');
        var basePart = kept.Count == 0 ? path : path + "?" + string.Join('&', kept);
        if (kind == PushTargetKind.S3)
        {
            try
            {
                _ = Blobs.S3BlobLocation.Parse(basePart);
            }
            catch (ArgumentException e)
            {
                throw Invalid(e.Message);
            }
        }

        return new PushTarget(text, kind, uri, compression, level) { Base = basePart };
    }

    /// <summary>Parses a <c>push-to</c> value: targets separated by spaces; returns its canonical text (each target once, in order).</summary>
    /// <exception cref="KilnException">One of them is not a target (Invalid).</exception>
    public static string Canonical(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var targets = ParseList(text);
        if (targets.Count > 8)
        {
            throw new KilnException(ErrorKind.Invalid, "push-to names at most 8 caches");
        }

        return string.Join(' ', targets.Select(t => t.Url));
    }

    /// <summary>The targets of a <c>push-to</c> value, each once.</summary>
    public static IReadOnlyList<PushTarget> ParseList(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return [.. text.Split([' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries).Distinct(StringComparer.Ordinal).Select(Parse)];
    }

    /// <summary>The URL without its query, as listings show it.</summary>
    public override string ToString() => Base;

    private static string Short(string text) => text.Length > 20 ? text[..20] + "…" : text;

    private static KilnException Invalid(string why) => new(ErrorKind.Invalid, $"the push-to target {why}");
}
