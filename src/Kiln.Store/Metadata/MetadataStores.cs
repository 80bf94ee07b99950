using Kiln.Store.Metadata.Postgres;
using Kiln.Store.Metadata.Sqlite;

namespace Kiln.Store.Metadata;

/// <summary>
/// Where metadata lives, by URL — the one place a provider is chosen: <c>sqlite:///absolute/path/kiln.db</c> (the
/// embedded default, in the data directory); <c>postgres://…</c> (or an Npgsql connection string, <c>Host=…;Database=…</c>)
/// when Kiln runs as several front doors on one PostgreSQL database.
/// </summary>
public static class MetadataStores
{
    /// <summary>The embedded default for a data directory.</summary>
    public static string DefaultUrl(string dataDirectory) => "sqlite://" + Path.Combine(Path.GetFullPath(dataDirectory), "kiln.db");

    /// <summary>Whether metadata exists at <paramref name="url"/> (a read-only lookup before the first server start finds nothing).</summary>
    public static bool Exists(string url)
    {
        ArgumentNullException.ThrowIfNull(url);
        return !url.StartsWith("sqlite://", StringComparison.Ordinal) || File.Exists(url["sqlite://".Length..]);
    }

    /// <summary>Opens (without migrating) the metadata at <paramref name="url"/>.</summary>
    /// <param name="url">Where the metadata is.</param>
    /// <param name="readOnly">Never write (lookups from sshd's AuthorizedKeysCommand).</param>
    /// <exception cref="ArgumentException">The URL names no provider Kiln has.</exception>
    public static IMetadataStore Open(string url, bool readOnly = false)
    {
        ArgumentNullException.ThrowIfNull(url);
        if (url.StartsWith("sqlite://", StringComparison.Ordinal))
        {
            var path = url["sqlite://".Length..];
            if (!Path.IsPathRooted(path))
            {
                throw new ArgumentException($"'{url}': a SQLite URL names an absolute path (sqlite:///var/lib/kiln/kiln.db)");
            }

            return new SqliteMetadataStore(path, readOnly);
        }

        if (PostgresConnection.IsPostgres(url))
        {
            return new PostgresMetadataStore(PostgresConnection.Parse(url), readOnly);
        }

        throw new ArgumentException($"'{PostgresConnection.Redact(url)}' is not a metadata URL Kiln knows (sqlite:///path/kiln.db, postgres://host/database)");
    }
}
