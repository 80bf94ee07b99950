using Npgsql;

namespace Kiln.Store.Metadata.Postgres;

/// <summary>
/// What an operator may write for <c>--database</c>: a <c>postgres://user@host:port/database?sslmode=require</c> URL
/// (libpq's form; <c>?host=/run/postgresql</c> for a Unix socket) or an Npgsql connection string
/// (<c>Host=…;Database=kiln;Username=kiln</c>). The password need not be on a command line: it may come from a file
/// (<c>?password_file=/etc/kiln/db-password</c>, or <c>Password File=…</c>; the file's first line), from
/// <c>KILN_DATABASE_PASSWORD</c>, or from a pgpass file (<c>?passfile=…</c>, as libpq).
/// </summary>
public static class PostgresConnection
{
    /// <summary>Whether <paramref name="text"/> names a PostgreSQL database (a URL, or a connection string naming a host).</summary>
    public static bool IsPostgres(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        return text.StartsWith("postgres://", StringComparison.Ordinal) || text.StartsWith("postgresql://", StringComparison.Ordinal)
            || (text.Contains('=', StringComparison.Ordinal) && !text.Contains("://", StringComparison.Ordinal));
    }

    // URL parameters and the connection string keys they are.
    private static readonly Dictionary<string, string> UrlParameters = new(StringComparer.Ordinal)
    {
        ["host"] = "Host",
        ["port"] = "Port",
        ["user"] = "Username",
        ["dbname"] = "Database",
        ["sslmode"] = "SSL Mode",
        ["sslrootcert"] = "Root Certificate",
        ["sslcert"] = "SSL Certificate",
        ["sslkey"] = "SSL Key",
        ["passfile"] = "Passfile",
        ["application_name"] = "Application Name",
        ["connect_timeout"] = "Timeout",
        ["options"] = "Options",
        ["target_session_attrs"] = "Target Session Attributes",
        ["password_file"] = PasswordFileKey,
    };

    private const string PasswordFileKey = "Password File";

    /// <summary>The Npgsql connection string for what the operator wrote, with the password resolved.</summary>
    /// <exception cref="ArgumentException">Not a form Kiln reads, or the password file cannot be read.</exception>
    public static string Parse(string text, Func<string, string?>? environment = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        environment ??= Environment.GetEnvironmentVariable;
        var settings = text.Contains("://", StringComparison.Ordinal) ? FromUrl(text) : FromKeywords(text);

        if (settings.Remove(PasswordFileKey, out var file))
        {
            if (settings.ContainsKey("Password"))
            {
                throw new ArgumentException("the database is given a password and a password file: give one");
            }

            try
            {
                settings["Password"] = File.ReadLines(file).FirstOrDefault() ?? "";
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new ArgumentException($"the database password file '{file}' cannot be read: {e.Message}", e);
            }
        }
        else if (!settings.ContainsKey("Password") && environment("KILN_DATABASE_PASSWORD") is { Length: > 0 } password)
        {
            settings["Password"] = password;
        }

        var builder = new NpgsqlConnectionStringBuilder();
        foreach (var (key, value) in settings)
        {
            try
            {
                builder[key] = value;
            }
            catch (Exception e) when (e is ArgumentException or FormatException)
            {
                throw new ArgumentException($"the database setting '{key}' is not one PostgreSQL connections have, or its value is not valid", e);
            }
        }

        if (string.IsNullOrEmpty(builder.Host))
        {
            throw new ArgumentException("the database connection names no host (postgres://HOST/DATABASE, or Host=…)");
        }

        return builder.ConnectionString;
    }

    private static Dictionary<string, string> FromKeywords(string text)
    {
        // Parsed by Npgsql itself (quoting rules and all), except the one key of Kiln's own.
        var settings = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        var builder = new System.Data.Common.DbConnectionStringBuilder { ConnectionString = text };
        foreach (string key in builder.Keys)
        {
            settings[key.Equals(PasswordFileKey, StringComparison.OrdinalIgnoreCase) ? PasswordFileKey : key] = Convert.ToString(builder[key], System.Globalization.CultureInfo.InvariantCulture)!;
        }

        return settings;
    }

    private static Dictionary<string, string> FromUrl(string text)
    {
        if (!Uri.TryCreate(text, UriKind.Absolute, out var uri) || uri.Scheme is not ("postgres" or "postgresql"))
        {
            throw new ArgumentException($"'{Redact(text)}' is not a PostgreSQL URL (postgres://user@host:port/database)");
        }

        var settings = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        if (uri.Host.Length > 0)
        {
            settings["Host"] = uri.Host;
        }

        if (!uri.IsDefaultPort && uri.Port > 0)
        {
            settings["Port"] = uri.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        if (uri.UserInfo.Length > 0)
        {
            var colon = uri.UserInfo.IndexOf(':', StringComparison.Ordinal);
            settings["Username"] = Uri.UnescapeDataString(colon < 0 ? uri.UserInfo : uri.UserInfo[..colon]);
            if (colon >= 0)
            {
                settings["Password"] = Uri.UnescapeDataString(uri.UserInfo[(colon + 1)..]);
            }
        }

        var database = Uri.UnescapeDataString(uri.AbsolutePath.TrimStart('/'));
        if (database.Length > 0)
        {
            settings["Database"] = database;
        }

        foreach (var pair in uri.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var equals = pair.IndexOf('=', StringComparison.Ordinal);
            var name = Uri.UnescapeDataString(equals < 0 ? pair : pair[..equals]);
            if (!UrlParameters.TryGetValue(name, out var key))
            {
                throw new ArgumentException($"the database URL parameter '{name}' is not one Kiln knows ({string.Join(", ", UrlParameters.Keys)})");
            }

            settings[key] = equals < 0 ? "" : Uri.UnescapeDataString(pair[(equals + 1)..]);
        }

        return settings;
    }

    /// <summary>The connection as it may be shown (logs, errors): without its password.</summary>
    public static string Redact(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (text.Contains("://", StringComparison.Ordinal))
        {
            // The user information ends at the last '@' before the path (a password may hold an unescaped '@').
            var scheme = text.IndexOf("://", StringComparison.Ordinal) + 3;
            var slash = text.IndexOf('/', scheme);
            var at = text.LastIndexOf('@', slash < 0 ? text.Length - 1 : slash);
            var colon = at < 0 ? -1 : text.IndexOf(':', scheme, at - scheme);
            return colon < 0 ? text : text[..(colon + 1)] + "***" + text[at..];
        }

        try
        {
            var builder = new NpgsqlConnectionStringBuilder(text);
            if (!string.IsNullOrEmpty(builder.Password))
            {
                builder.Password = "***";
            }

            if (!string.IsNullOrEmpty(builder.SslPassword))
            {
                builder.SslPassword = "***";
            }

            return builder.ConnectionString;
        }
        catch (ArgumentException)
        {
            return "(a connection string Kiln cannot read)";
        }
    }
}
