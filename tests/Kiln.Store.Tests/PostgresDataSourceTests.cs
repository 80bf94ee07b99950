using Kiln.Store.Metadata.Postgres;
using Npgsql;

namespace Kiln.Store.Tests;

/// <summary>
/// The data sources PostgresMetadataStore builds (Npgsql's slim builder, with what Kiln needs enabled by hand): what
/// the full builder would have given and the slim one must be told.
/// </summary>
public sealed class PostgresDataSourceTests
{
    // The run's PostgreSQL has no TLS, and a server that says no to it is refused before the client's TLS is ever
    // reached; so a listener answers the client's SSLRequest with yes (PostgreSQL's 'S') and then sends nothing: a
    // client with TLS starts its handshake and fails on the closed connection, where a data source without transport
    // security refuses at the 'S' (NotSupportedException). GSS encryption off: its request would come first.
    [Fact]
    public async Task Kiln_data_sources_speak_TLS()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        var port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        var answering = Task.Run(async () =>
        {
            using var client = await listener.AcceptTcpClientAsync();
            var stream = client.GetStream();
            await stream.ReadExactlyAsync(new byte[8]); // length 8, code 80877103
            await stream.WriteAsync("S"u8.ToArray());
            await Task.Delay(200);
        });
        await using var source = PostgresMetadataStore.Source($"Host=127.0.0.1;Port={port};Username=kiln;Password=x;Database=kiln;SSL Mode=Require;GSS Encryption Mode=Disable;Timeout=10");
        var refused = await Assert.ThrowsAnyAsync<Exception>(async () => await (await source.OpenConnectionAsync()).DisposeAsync());
        Assert.True(refused is NpgsqlException, refused.ToString());
        await answering;
    }
}
