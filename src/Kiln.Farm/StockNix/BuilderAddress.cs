using System.Globalization;

namespace Kiln.Farm.StockNix;

/// <summary>Where a stock Nix builder is: <c>ssh-ng://[user@]host[:port]</c>, as Nix's machine specifications write it.</summary>
public sealed record BuilderAddress(string User, string Host, int Port)
{
    /// <summary>Parses the address; the error says what is wrong with it.</summary>
    public static bool TryParse(string text, out BuilderAddress address, out string error)
    {
        ArgumentNullException.ThrowIfNull(text);
        address = new BuilderAddress("", "", 22);
        const string Scheme = "ssh-ng://";
        if (!text.StartsWith(Scheme, StringComparison.Ordinal))
        {
            error = text.StartsWith("ssh://", StringComparison.Ordinal)
                ? "Kiln reaches stock builders with ssh-ng:// (the daemon's worker protocol), not ssh://"
                : $"'{text}' is not an ssh-ng:// address";
            return false;
        }

        var rest = text[Scheme.Length..].TrimEnd('/');
        var at = rest.LastIndexOf('@');
        var user = at < 0 ? "" : rest[..at];
        var hostPort = at < 0 ? rest : rest[(at + 1)..];
        var port = 22;
        var colon = hostPort.LastIndexOf(':');
        if (colon >= 0 && !hostPort.EndsWith(']'))
        {
            if (!int.TryParse(hostPort[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out port) || port is < 1 or > 65535)
            {
                error = $"'{hostPort[(colon + 1)..]}' is not a port";
                return false;
            }

            hostPort = hostPort[..colon];
        }

        var host = hostPort.Trim('[', ']');
        // The parts go to ssh as arguments of their own; nothing may look like an option or hold a space or '?'.
        if (host.Length == 0 || host.StartsWith('-') || user.StartsWith('-') || string.Concat(host, user).Any(c => char.IsWhiteSpace(c) || c is '?' or '/' or '@'))
        {
            error = $"'{text}' has no usable host{(user.Length > 0 ? " or user" : "")}";
            return false;
        }

        address = new BuilderAddress(user, host, port);
        error = "";
        return true;
    }

    /// <summary>The host as <c>known_hosts</c> names it: <c>host</c> on port 22, <c>[host]:port</c> otherwise.</summary>
    public string KnownHostsName => Port == 22 ? Host : $"[{Host}]:{Port.ToString(CultureInfo.InvariantCulture)}";

    public override string ToString() => $"ssh-ng://{(User.Length > 0 ? User + "@" : "")}{(Host.Contains(':', StringComparison.Ordinal) ? $"[{Host}]" : Host)}{(Port == 22 ? "" : ":" + Port.ToString(CultureInfo.InvariantCulture))}";
}
