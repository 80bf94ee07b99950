using System.Collections.Concurrent;
using System.Net;

namespace Kiln.Nix.Tests.Support;

/// <summary>
/// A real HTTP server on loopback (<see cref="HttpListener"/>) serving whatever a test puts in <see cref="Files"/> (404
/// for anything else), optionally slowly: an upstream binary cache a test fully controls, hostile ones included.
/// </summary>
public sealed class FileServer : IAsyncDisposable
{
    private readonly HttpListener _listener;
    private readonly Task _serving;

    public FileServer()
    {
        for (var port = 20000 + Random.Shared.Next(20000); ; port++)
        {
            // A new listener for each port tried: one whose Start failed (the port taken) is disposed by it.
            var listener = new HttpListener();
            try
            {
                Url = $"http://127.0.0.1:{port}/";
                listener.Prefixes.Add(Url);
                listener.Start();
                _listener = listener;
                break;
            }
            catch (HttpListenerException)
            {
                listener.Close();
            }
        }

        _serving = ServeAsync();
    }

    /// <summary>The server's base URL, with a trailing slash.</summary>
    public string Url { get; private set; } = "";

    /// <summary>Path (without the leading slash) → body.</summary>
    public ConcurrentDictionary<string, byte[]> Files { get; } = new();

    /// <summary>Paths whose body is sent a byte first, the rest two seconds later (a slow download to join).</summary>
    public ConcurrentDictionary<string, bool> Slow { get; } = new();

    /// <summary>Every path asked for, in order.</summary>
    public ConcurrentQueue<string> Requests { get; } = new();

    private async Task ServeAsync()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return;
            }

            var name = context.Request.Url!.AbsolutePath.TrimStart('/');
            Requests.Enqueue(name);
            if (!Files.TryGetValue(name, out var body))
            {
                context.Response.StatusCode = 404;
                context.Response.Close();
                continue;
            }

            context.Response.StatusCode = 200;
            if (Slow.ContainsKey(name))
            {
                var slow = context;
                _ = Task.Run(async () =>
                {
                    await slow.Response.OutputStream.WriteAsync(body.AsMemory(0, 1));
                    await slow.Response.OutputStream.FlushAsync();
                    await Task.Delay(2000);
                    await slow.Response.OutputStream.WriteAsync(body.AsMemory(1));
                    slow.Response.Close();
                });
                continue;
            }

            await context.Response.OutputStream.WriteAsync(body);
            context.Response.Close();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _listener.Stop();
        _listener.Close();
        try
        {
            await _serving;
        }
        catch (Exception e) when (e is HttpListenerException or ObjectDisposedException)
        {
        }
    }
}
