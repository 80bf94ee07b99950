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

    /// <summary>The file in a data directory that names the database it is bound to (<see cref="Bind"/>).</summary>
    public const string BindingFile = "database";

    /// <summary>
    /// The metadata a data directory uses: the database <c>kiln serve --database</c> bound it to, or the embedded
    /// SQLite in it. Every command given <c>--data</c> (accounts, the store's maintenance, sshd's key lookups) asks here,
    /// so they all reach the database the server uses without being told again.
    /// </summary>
    public static string ForDataDirectory(string dataDirectory)
    {
        return DataDirectoryBindings.Read(dataDirectory, BindingFile) ?? DefaultUrl(dataDirectory);
    }

    /// <summary>
    /// Binds a data directory to a PostgreSQL database: its connection, with the password resolved (from a file or
    /// <c>KILN_DATABASE_PASSWORD</c>), is kept in <see cref="BindingFile"/>, readable by Kiln's user alone (as kiln.db is,
    /// with its signing keys), for the commands that run without the server's environment (sshd's key lookups).
    /// </summary>
    /// <exception cref="ArgumentException">Not a PostgreSQL connection, or the directory already keeps its metadata in SQLite.</exception>
    public static void Bind(string dataDirectory, string connection)
    {
        var resolved = Resolve(connection);
        var directory = Path.GetFullPath(dataDirectory);
        var binding = Path.Combine(directory, BindingFile);
        if (!File.Exists(binding) && File.Exists(Path.Combine(directory, "kiln.db")))
        {
            // Switching silently would hide every account, key and path the directory's SQLite holds.
            throw new ArgumentException($"{directory} keeps its metadata in kiln.db (SQLite); start a PostgreSQL front door with a new data directory");
        }

        DataDirectoryBindings.Write(directory, BindingFile, resolved);
    }

    /// <summary>
    /// A PostgreSQL database as a data directory is bound to it: its connection string with the password resolved (from
    /// <c>password_file</c> or <c>KILN_DATABASE_PASSWORD</c>).
    /// </summary>
    /// <exception cref="ArgumentException">Not a PostgreSQL connection.</exception>
    public static string Resolve(string connection)
    {
        ArgumentNullException.ThrowIfNull(connection);
        return PostgresConnection.IsPostgres(connection) ? PostgresConnection.Parse(connection)
            : throw new ArgumentException($"'{PostgresConnection.Redact(connection)}' is not a PostgreSQL database (postgres://user@host/database, or Host=…;Database=…)");
    }

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
