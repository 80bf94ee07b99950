using System.Net;
using System.Net.Sockets;

namespace Kiln.EndToEnd.Tests.Support;

/// <summary>
/// A plain HTTP file server (.NET's HttpListener, on 127.0.0.1 or another address of this host) for builds that fetch: GET of a file in the directory,
/// 404 otherwise. It lives as long as the test process.
/// </summary>
public static class HttpServer
{
    /// <summary>Serves <paramref name="directory"/> on <paramref name="address"/> (default loopback); returns the port.</summary>
    public static int Start(string directory, IPAddress? address = null)
    {
        address ??= IPAddress.Loopback;
        var probe = new TcpListener(address, 0);
        probe.Start();
        var port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();

        var listener = new HttpListener();
        listener.Prefixes.Add($"http://{address}:{port}/");
        listener.Start();
        _ = Task.Run(async () =>
        {
            while (listener.IsListening)
            {
                var context = await listener.GetContextAsync().ConfigureAwait(false);
                _ = Task.Run(() => Serve(context, directory));
            }
        });
        return port;
    }

    private static void Serve(HttpListenerContext context, string directory)
    {
        using var response = context.Response;
        var name = Path.GetFileName(context.Request.Url?.AbsolutePath ?? "");
        var file = Path.Combine(directory, name);
        if (name.Length == 0 || !File.Exists(file))
        {
            response.StatusCode = 404;
            return;
        }

        var bytes = File.ReadAllBytes(file);
        response.ContentLength64 = bytes.Length;
        response.OutputStream.Write(bytes);
    }
}
