using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// A real nginx on a free port of 127.0.0.1 serving a directory as static files: the "fake cache.nixos.org" in front
/// of a binary cache stock Nix wrote. Stopped (SIGKILL, as a crashed upstream) on <see cref="Stop"/> or dispose.
/// </summary>
public sealed class Nginx : IDisposable
{
    private readonly Process _process;
    private readonly string _directory;

    /// <param name="root">The directory served.</param>
    /// <param name="rateLimit">nginx's limit_rate (bytes per second per connection, such as <c>200k</c>), or null.</param>
    /// <param name="proxyTo">Instead of serving <paramref name="root"/>, be a reverse proxy to this URL (nginx's defaults, but any body size).</param>
    /// <param name="webdavUser">Also take PUT (nginx's WebDAV module, as a binary cache one pushes to), from this user
    /// only (<c>NAME:PASSWORD</c>, HTTP basic authentication); GETs need no password.</param>
    public Nginx(string root, string? rateLimit = null, string? proxyTo = null, string? webdavUser = null)
    {
        _directory = Directory.CreateTempSubdirectory("kiln-nginx-").FullName;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            Port = ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        var webdav = "";
        if (webdavUser is not null)
        {
            var (name, password) = (webdavUser[..webdavUser.IndexOf(':', StringComparison.Ordinal)], webdavUser[(webdavUser.IndexOf(':', StringComparison.Ordinal) + 1)..]);
            File.WriteAllText(Path.Combine(_directory, "htpasswd"), $"{name}:{{PLAIN}}{password}\n");
            webdav = $$"""
                dav_methods PUT;
                create_full_put_path on;
                dav_access user:rw group:r all:r;
                client_max_body_size 0;
                limit_except GET HEAD { auth_basic "push"; auth_basic_user_file {{_directory}}/htpasswd; }
                """;
        }

        File.WriteAllText(Path.Combine(_directory, "nginx.conf"), $$"""
            {{(webdavUser is not null && Environment.UserName == "root" ? "user root root;" : "")}}
            daemon off;
            worker_processes 1;
            pid {{_directory}}/nginx.pid;
            error_log {{_directory}}/error.log warn;
            events { worker_connections 64; }
            http {
              access_log off;
              client_body_temp_path {{_directory}}/body;
              proxy_temp_path {{_directory}}/proxy;
              fastcgi_temp_path {{_directory}}/fastcgi;
              uwsgi_temp_path {{_directory}}/uwsgi;
              scgi_temp_path {{_directory}}/scgi;
              types { text/x-nix-narinfo narinfo; }
              default_type application/octet-stream;
              server {
                listen 127.0.0.1:{{Port}};
                root {{root}};
                {{(rateLimit is null ? "" : $"limit_rate {rateLimit};")}}
                {{(proxyTo is null ? "" : $"client_max_body_size 0; location / {{ proxy_pass {proxyTo}; }}")}}
                {{(webdav.Length == 0 ? "" : $"location / {{ {webdav} }}")}}
              }
            }
            """);
        _process = Process.Start(new ProcessStartInfo("/usr/sbin/nginx", ["-c", Path.Combine(_directory, "nginx.conf"), "-p", _directory])
        {
            UseShellExecute = false,
        })!;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!Listening())
        {
            if (_process.HasExited || DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException($"nginx did not start: {ReadLog()}");
            }

            Thread.Sleep(50);
        }
    }

    public int Port { get; }

    public string Url => $"http://127.0.0.1:{Port}";

    private string ReadLog() => File.Exists(Path.Combine(_directory, "error.log")) ? File.ReadAllText(Path.Combine(_directory, "error.log")) : "";

    private bool Listening()
    {
        try
        {
            using var client = new TcpClient();
            client.Connect(IPAddress.Loopback, Port);
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>Kills nginx, master and workers, at once: connections break mid-transfer.</summary>
    public void Stop()
    {
        if (File.Exists(Path.Combine(_directory, "nginx.pid")))
        {
            // The master is frozen first: killed workers would otherwise be replaced by new ones that outlive it.
            Kiln.Nix.Tests.Support.Processes.Run("sh", ["-c", $"kill -STOP {_process.Id}; pkill -KILL -P {_process.Id}; kill -KILL {_process.Id}"]);
        }

        _process.WaitForExit();
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            Stop();
        }

        _process.Dispose();
        Directory.Delete(_directory, recursive: true);
    }
}
