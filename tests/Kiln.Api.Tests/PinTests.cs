using System.Text.Json;
using Kiln.Store.Accounts;

namespace Kiln.Api.Tests;

/// <summary><c>/pins</c>: an account pins paths of its own store only, and sees and removes only its own pins.</summary>
public sealed class PinTests : ApiFixture
{
    [Fact]
    public async Task An_account_pins_its_own_paths_and_no_one_elses()
    {
        var path = await PathAsync("alice", "kept", "keep me");
        var alice = await TokenAsync("alice", KeyPermissions.StoreRead | KeyPermissions.StoreWrite);
        var bob = await TokenAsync("bob", KeyPermissions.StoreRead | KeyPermissions.StoreWrite);
        var body = JsonSerializer.Serialize(new { path = path.ToString(), name = "release 1.0" });

        Assert.Equal(404, (await SendAsync(HttpMethod.Post, "/api/v1/pins", bob, body)).Status); // not in his store
        Assert.Equal(403, (await SendAsync(HttpMethod.Post, "/api/v1/pins", await TokenAsync("alice", KeyPermissions.StoreRead), body)).Status);
        Assert.Equal(400, (await SendAsync(HttpMethod.Post, "/api/v1/pins", alice, """{"path":"/etc/passwd"}""")).Status);
        Assert.Equal(400, (await SendAsync(HttpMethod.Post, "/api/v1/pins", alice, JsonSerializer.Serialize(new { path = path.ToString(), name = "a\nb" }))).Status);

        var made = await SendAsync(HttpMethod.Post, "/api/v1/pins", alice, body);
        Assert.True(made.Status == 201, made.Body);
        var pins = JsonDocument.Parse((await GetAsync("/api/v1/pins", alice)).Body).RootElement.EnumerateArray().ToList();
        Assert.Equal(("release 1.0", path.ToString()), (pins.Single().GetProperty("name").GetString(), pins.Single().GetProperty("path").GetString()));
        Assert.Equal("[]", (await GetAsync("/api/v1/pins", bob)).Body);
        Assert.Equal(404, (await SendAsync(HttpMethod.Delete, "/api/v1/pins?name=release%201.0", bob)).Status);
        Assert.Equal(204, (await SendAsync(HttpMethod.Delete, "/api/v1/pins?name=release%201.0", alice)).Status);
        Assert.Equal("[]", (await GetAsync("/api/v1/pins", alice)).Body);
    }
}
