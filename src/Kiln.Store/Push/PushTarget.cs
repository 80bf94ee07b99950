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

    /// <summary>A Nix daemon over SSH (<c>ssh-ng://USER@HOST:PORT?base64-ssh-public-host-key=…</c>), logged into with the account's push key.</summary>
    SshNg,
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
    private const string HostKeyParameter = "base64-ssh-public-host-key";

    /// <summary>An <c>ssh-ng://</c> target's host key, <c>TYPE BASE64</c> (checked on every login: no first-use trust).</summary>
    public string? HostKey { get; private init; }

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
            "ssh-ng" => PushTargetKind.SshNg,
            "ssh" => throw Invalid("is an ssh:// store: Kiln pushes to Nix daemons over ssh-ng://"),
            _ => throw Invalid("is not a file://, http(s):// or s3:// binary cache or an ssh-ng:// store"),
        };
        if (uri.UserInfo.Length > 0 && !(kind == PushTargetKind.SshNg && !uri.UserInfo.Contains(':', StringComparison.Ordinal)))
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

        var compression = kind == PushTargetKind.SshNg ? "none" : "xz";
        int? level = null;
        string? hostKey = null;
        var kept = new List<string>();
        foreach (var pair in uri.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var equals = pair.IndexOf('=', StringComparison.Ordinal);
            var name = Uri.UnescapeDataString(equals < 0 ? pair : pair[..equals]);
            var value = equals < 0 ? "" : Uri.UnescapeDataString(pair[(equals + 1)..]);
            if (kind == PushTargetKind.SshNg)
            {
                hostKey = name == HostKeyParameter ? HostKeyOf(value) : throw Invalid($"has the parameter '{Short(name)}' (an ssh-ng:// target takes {HostKeyParameter} only)");
            }
            else if (name == "compression")
            {
                compression = Compressors.Methods.Contains(value) ? value : throw Invalid($"asks for compression '{Short(value)}' (Kiln writes {string.Join(", ", Compressors.Methods)})");
            }
            else if (name == "compression-level")
            {
                level = int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var l) ? l : throw Invalid("has a compression-level that is not a number");
            }
            else if (kind == PushTargetKind.S3 && S3Parameters.Contains(name))
            {
                if (name == "endpoint" && Uri.TryCreate(value, UriKind.Absolute, out var endpoint)
                    && (endpoint.UserInfo.Length > 0 || (endpoint.Host.EndsWith("amazonaws.com", StringComparison.OrdinalIgnoreCase) && !endpoint.Host.EndsWith(".amazonaws.com", StringComparison.OrdinalIgnoreCase))))
                {
                    throw Invalid(endpoint.UserInfo.Length > 0 ? "has an endpoint carrying credentials: put them in the account's netrc" : "has an endpoint that looks like AWS's and is not");
                }

                kept.Add(pair);
            }
            else
            {
                throw Invalid($"has the parameter '{Short(name)}', which Kiln does not know here (it knows {string.Join(", ", kind == PushTargetKind.S3 ? [.. CommonParameters, .. S3Parameters] : CommonParameters)})");
            }
        }

        if (kind == PushTargetKind.SshNg && hostKey is null)
        {
            throw Invalid($"needs {HostKeyParameter}=… (the host's public key line, base64, as Nix's machines files give it): Kiln logs in only where it knows the host");
        }

        if (kind == PushTargetKind.SshNg && (uri.AbsolutePath.Trim('/').Length > 0 || uri.Host.StartsWith('-') || uri.UserInfo.StartsWith('-')))
        {
            throw Invalid("is not ssh-ng://[USER@]HOST[:PORT]");
        }

        // (xz above 6 needs hundreds of MiB per encoder: a push may not ask the server for that.)
        if (level is { } chosen && (!Compressors.IsLevel(compression, chosen) || (compression == "xz" && chosen > 6)))
        {
            throw Invalid($"asks for {compression} level {chosen} (xz takes 0 to 6 here, zstd 1 to 19)");
        }

        var path = uri.GetComponents(UriComponents.SchemeAndServer | UriComponents.Path, UriFormat.UriEscaped).TrimEnd('/');
        var basePart = kept.Count == 0 ? path : path + "?" + string.Join('&', kept);
        if (kind == PushTargetKind.SshNg)
        {
            basePart = $"ssh-ng://{(uri.UserInfo.Length > 0 ? Uri.UnescapeDataString(uri.UserInfo) + "@" : "")}{uri.Authority}";
        }

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

        return new PushTarget(text, kind, uri, compression, level) { Base = basePart, HostKey = hostKey };
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

    // A host key as Nix's machines files give it: the base64 of "TYPE BASE64-BLOB".
    private static string HostKeyOf(string base64)
    {
        try
        {
            var line = System.Text.Encoding.UTF8.GetString(Convert.FromBase64String(base64)).Trim();
            var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length >= 2 && (parts[0].StartsWith("ssh-", StringComparison.Ordinal) || parts[0].StartsWith("ecdsa-", StringComparison.Ordinal)))
            {
                _ = Convert.FromBase64String(parts[1]);
                return $"{parts[0]} {parts[1]}";
            }
        }
        catch (FormatException)
        {
        }

        throw Invalid($"has a {HostKeyParameter} that is not a host's public key line in base64");
    }

    private static string Short(string text) => text.Length > 20 ? text[..20] + "…" : text;

    private static KilnException Invalid(string why) => new(ErrorKind.Invalid, $"the push-to target {why}");
}
