using System.Globalization;

namespace Kiln.Nix.Tests.Support;

/// <summary>
/// A private PostgreSQL cluster for one test run: Debian's PostgreSQL server binaries (<c>initdb</c>, <c>pg_ctl</c>),
/// a cluster in a temporary directory owned by the <c>postgres</c> user when the tests run as root (PostgreSQL refuses
/// to run as root), listening on 127.0.0.1 on a free port with password authentication, stopped and removed on
/// dispose. No systemd, nothing outside its directory. Use it as an assembly fixture; each test takes a fresh
/// database from <see cref="CreateDatabase"/>.
/// </summary>
public sealed class PostgresServer : IDisposable
{
    private readonly string? _bin;
    private readonly string _directory = Path.Combine(Path.GetTempPath(), $"kiln-test-pg-{Guid.NewGuid():N}");
    private readonly string? _unavailable;
    private readonly bool _asPostgresUser = Environment.UserName == "root";
    private bool _started;

    public const string User = "kiln";

    /// <summary>The superuser's password (random per run): connections over TCP must give it.</summary>
    public string Password { get; } = Convert.ToHexString(Guid.NewGuid().ToByteArray()).ToLowerInvariant();

    public int Port { get; }

    private string DataDirectory => Path.Combine(_directory, "data");

    public PostgresServer()
    {
        _bin = Directory.Exists("/usr/lib/postgresql")
            ? Directory.GetDirectories("/usr/lib/postgresql").Select(d => Path.Combine(d, "bin"))
                .Where(b => File.Exists(Path.Combine(b, "initdb"))).OrderByDescending(b => b, StringComparer.Ordinal).FirstOrDefault()
            : null;
        if (_bin is null)
        {
            _unavailable = "PostgreSQL's server binaries are not installed (apt-get install postgresql)";
            return;
        }

        Port = TestPorts.Free();
        Directory.CreateDirectory(_directory);
        var passwordFile = Path.Combine(_directory, "password");
        File.WriteAllText(passwordFile, Password + "\n");
        if (_asPostgresUser)
        {
            Run("chown", ["-R", "postgres:postgres", _directory]);
        }

        File.SetUnixFileMode(_directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        // ICU's English collation, not byte order (as many real clusters have), so a query that forgets COLLATE "C"
        // sorts differently from SQLite and its test fails.
        Server("initdb", ["-D", DataDirectory, "-U", User, "--pwfile", passwordFile, "--auth-local=trust", "--auth-host=scram-sha-256",
            "-E", "UTF8", "--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=en", "--no-sync"]);
        Server("pg_ctl", ["-D", DataDirectory, "-l", Path.Combine(_directory, "server.log"), "-w", "-t", "60", "-o",
            $"-p {Port} -k {_directory} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300", "start"]);
        _started = true;
    }

    /// <summary>Skips the test (or fails it under KILN_REQUIRE_POSTGRES=1, as CI runs) when there is no PostgreSQL here.</summary>
    public void Require()
    {
        if (_unavailable is null)
        {
            return;
        }

        if (Environment.GetEnvironmentVariable("KILN_REQUIRE_POSTGRES") == "1")
        {
            throw new InvalidOperationException(_unavailable);
        }

        Assert.Skip(_unavailable);
    }

    /// <summary>Creates an empty database and returns its connection string (TCP, with the password).</summary>
    public string CreateDatabase()
    {
        Require();
        var name = $"t_{Guid.NewGuid():N}";
        Server("createdb", ["-h", _directory, "-p", Port.ToString(CultureInfo.InvariantCulture), "-U", User, name]);
        return ConnectionString(name);
    }

    public string ConnectionString(string database) => $"Host=127.0.0.1;Port={Port};Username={User};Password={Password};Database={database}";

    /// <summary>Runs SQL as the superuser over the Unix socket (psql), returning its output.</summary>
    public string Sql(string database, string sql) =>
        Server("psql", ["-h", _directory, "-p", Port.ToString(CultureInfo.InvariantCulture), "-U", User, "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]);

    // A PostgreSQL program from the server's bin directory (psql is also in /usr/bin), as the postgres user when root.
    private string Server(string program, string[] args)
    {
        var path = Path.Combine(_bin!, program);
        if (!File.Exists(path))
        {
            path = "/usr/bin/" + program;
        }

        var result = _asPostgresUser ? Processes.Run("runuser", ["-u", "postgres", "--", path, .. args]) : Processes.Run(path, args);
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException($"{program} failed ({result.ExitCode}): {result.Stderr}{result.StdoutText}");
        }

        return result.StdoutText;
    }

    private static void Run(string program, string[] args)
    {
        var result = Processes.Run(program, args);
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException($"{program} failed: {result.Stderr}");
        }
    }

    public void Dispose()
    {
        if (_started)
        {
            try
            {
                Server("pg_ctl", ["-D", DataDirectory, "-m", "immediate", "-w", "stop"]);
            }
            catch (InvalidOperationException)
            {
                // Already gone (a test stopped it): the directory goes all the same.
            }
        }

        if (Directory.Exists(_directory))
        {
            Directory.Delete(_directory, recursive: true);
        }
    }
}
