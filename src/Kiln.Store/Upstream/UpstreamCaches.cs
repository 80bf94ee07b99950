using System.Net;
using Kiln.Nix.Signing;

namespace Kiln.Store.Upstream;

/// <summary>One upstream binary cache as an account uses it: its URL and the credentials it sends there, if any.</summary>
public sealed record UpstreamCache(Uri Url, NetworkCredential? Credentials)
{
    /// <summary>What is fetched with credentials joins only the view of the account whose credentials they were.</summary>
    public bool IsPublic => Credentials is null;
}

/// <summary>
/// An account's upstream caches, in order of preference, and the keys it trusts for what they serve: the operator's
/// (<see cref="ServerKeys"/>, whose signatures make a path globally trusted) and its own (trusted by it alone).
/// </summary>
public sealed record UpstreamPlan(IReadOnlyList<UpstreamCache> Caches, IReadOnlyList<PublicKey> TrustedKeys, IReadOnlyList<PublicKey> ServerKeys)
{
    public static UpstreamPlan None { get; } = new([], [], []);

    /// <summary>How far a narinfo's signatures make its path trusted: globally (an operator's key signed it) or by this account only.</summary>
    public Metadata.PathTrust TrustOf(NarInfo narInfo)
    {
        ArgumentNullException.ThrowIfNull(narInfo);
        var fingerprint = narInfo.Fingerprint();
        return ServerKeys.Any(key => narInfo.Signatures.Any(signature => key.Verify(fingerprint, signature)))
            ? Metadata.PathTrust.SignedByTrustedKey
            : Metadata.PathTrust.SignedByAccountKey;
    }

    /// <summary>
    /// The account's caches (its own list, or the server's when it names none), the server's keys and the account's,
    /// and credentials from the account's netrc text for the caches' hosts.
    /// </summary>
    public static UpstreamPlan Resolve(Metadata.UpstreamSettings settings, StoreOptions options, Action<string> warn)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(warn);
        IReadOnlyList<string> urls = Split(settings.Substituters);
        if (urls.Count == 0)
        {
            urls = options.DefaultSubstituters;
        }

        var netrc = Netrc.Parse(settings.Netrc);
        var caches = new List<UpstreamCache>();
        foreach (var url in urls)
        {
            if (Uri.TryCreate(url.TrimEnd('/') + "/", UriKind.Absolute, out var uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps))
            {
                caches.Add(new UpstreamCache(uri, netrc.For(uri.Host)));
            }
            else
            {
                warn($"ignoring substituter '{url}': Kiln fetches from http:// and https:// binary caches");
            }
        }

        var server = Keys(options.DefaultTrustedPublicKeys, warn);
        return new UpstreamPlan(caches, [.. server, .. Keys(Split(settings.TrustedPublicKeys), warn)], server);
    }

    private static List<PublicKey> Keys(IEnumerable<string> texts, Action<string> warn)
    {
        var keys = new List<PublicKey>();
        foreach (var text in texts)
        {
            try
            {
                keys.Add(PublicKey.Parse(text));
            }
            catch (Kiln.Nix.NixFormatException e)
            {
                warn($"ignoring trusted public key: {e.Message}");
            }
        }

        return keys;
    }

    private static string[] Split(string text) => text.Split([' ', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries);
}

/// <summary>Credentials in netrc format (<c>machine HOST login USER password SECRET</c>, <c>default …</c>), as Nix's <c>netrc-file</c>.</summary>
public sealed class Netrc
{
    private readonly Dictionary<string, NetworkCredential> _machines = new(StringComparer.OrdinalIgnoreCase);
    private NetworkCredential? _default;

    public static Netrc Parse(string text)
    {
        var netrc = new Netrc();
        var tokens = text.Split([' ', '\n', '\t', '\r'], StringSplitOptions.RemoveEmptyEntries);
        string? machine = null;
        var isDefault = false;
        string login = "", password = "";
        void Flush()
        {
            if (machine is not null || isDefault)
            {
                var credential = new NetworkCredential(login, password);
                if (isDefault)
                {
                    netrc._default = credential;
                }
                else
                {
                    netrc._machines[machine!] = credential;
                }
            }

            (machine, isDefault, login, password) = (null, false, "", "");
        }

        for (var i = 0; i < tokens.Length; i++)
        {
            var value = i + 1 < tokens.Length ? tokens[i + 1] : "";
            switch (tokens[i])
            {
                case "machine":
                    Flush();
                    machine = value;
                    i++;
                    break;
                case "default":
                    Flush();
                    isDefault = true;
                    break;
                case "login":
                    login = value;
                    i++;
                    break;
                case "password":
                    password = value;
                    i++;
                    break;
            }
        }

        Flush();
        return netrc;
    }

    /// <summary>The machines it has credentials for, in no particular order.</summary>
    public IReadOnlyCollection<string> Machines => _machines.Keys;

    /// <summary>Whether it has a <c>default</c> entry (credentials for any other host).</summary>
    public bool HasDefault => _default is not null;

    /// <summary>The credentials for <paramref name="host"/>: its machine's, else the default's, else none.</summary>
    public NetworkCredential? For(string host) => _machines.TryGetValue(host, out var credential) ? credential : _default;
}
