using System.Net.Http.Headers;
using System.Text;
using Kiln.Accounts;
using Kiln.Dashboard;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.Logging;

namespace Kiln.Api.Tests;

/// <summary>
/// A store of its own and the API over it in ASP.NET Core's TestServer (the same <see cref="KilnApi.UseKilnApi"/> that
/// <c>kiln serve</c> runs), with the real account services and tokens made as <c>kiln token create</c> makes them.
/// </summary>
public abstract class ApiFixture : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private WebApplication _app = null!;

    protected KilnStore Store { get; private set; } = null!;

    protected AccountService Accounts { get; private set; } = null!;

    /// <summary>
    /// The scheduler's side of cancelling, as the API sees it: it records what it is asked (the scheduler's own cancel is
    /// tested in Kiln.Scheduler.Tests and, through this API, end to end).
    /// </summary>
    protected RecordingControl Control { get; } = new();

    protected sealed class RecordingControl : IBuildControl
    {
        public List<(long Build, long Account)> Cancelled { get; } = [];

        public Task<bool> CancelAsync(long buildId, long account, CancellationToken cancellationToken)
        {
            lock (Cancelled)
            {
                Cancelled.Add((buildId, account));
            }

            return Task.FromResult(true);
        }

        public List<(string Derivation, long Account)> CancelledDerivations { get; } = [];

        public Task<int> CancelDerivationAsync(StorePath drvPath, long account, CancellationToken cancellationToken)
        {
            lock (CancelledDerivations)
            {
                CancelledDerivations.Add((drvPath.ToString(), account));
            }

            return Task.FromResult(drvPath.Name.StartsWith("nothing-", StringComparison.Ordinal) ? 0 : 1);
        }

        public Task<QueueDocument> QueueAsync(long account, CancellationToken cancellationToken) => Task.FromResult(new QueueDocument(0, []));

        public Task<FarmDocument> FarmAsync(CancellationToken cancellationToken) => Task.FromResult<FarmDocument>(new(0, 0, 4, 1, 7, 2, [new FarmAgentDocument("embedded", "agent", ["x86_64-linux"], 4, 1)]));
    }

    protected HttpClient Http { get; private set; } = null!;

    public async ValueTask InitializeAsync()
    {
        Store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"] }, default);
        Accounts = new AccountService(Store.Accounts, Store.Settings, new SshKeygenProofs(), "test");
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseTestServer();
        builder.Logging.ClearProviders();
        builder.Services.AddKilnApi();
        _app = builder.Build();
        var sessions = new BrowserSessions(Store);
        _app.UseKilnDashboard(Store, Accounts, sessions);
        _app.UseKilnApi(Store, Accounts, Control, sessions);
        await _app.StartAsync();
        Http = _app.GetTestClient();
    }

    public async ValueTask DisposeAsync()
    {
        Http.Dispose();
        await _app.DisposeAsync();
        await Store.DisposeAsync();
        _temp.Dispose();
        GC.SuppressFinalize(this);
    }

    /// <summary>A new token of <paramref name="account"/> (created on first use), made by the operator.</summary>
    protected async Task<string> TokenAsync(string account, KeyPermissions permissions = KeyPermissions.All, DateTimeOffset? expires = null)
    {
        var record = new AccountRecord(await Store.Accounts.GetOrCreateAccountAsync(account, default), account);
        var (secret, _) = await Accounts.CreateTokenAsync(Actor.Operator, record, permissions, expires, "test", default);
        return secret;
    }

    /// <summary>Records a build for <paramref name="account"/>, with a log of the given lines; it ends unless <paramref name="running"/>.</summary>
    protected async Task<long> BuildAsync(string account, string name, bool succeeded = true, bool running = false, long started = 1_000, string? error = null,
        int attempts = 1, params string[] log)
    {
        var id = await Store.Accounts.GetOrCreateAccountAsync(account, default);
        var build = await Store.Builds.StartBuildAsync($"step-{name}", $"{new string('a', 32)}-{name}.drv", id, started, default);
        if (!running)
        {
            using (var writer = Store.Logs.Create(build))
            {
                foreach (var line in log)
                {
                    writer.AppendLine(line);
                }
            }

            await Store.Builds.FinishBuildAsync(build, new BuildEnd(succeeded, succeeded ? "" : "PermanentFailure", succeeded ? "" : error ?? "builder failed with exit code 1",
                started + 3, 2_000_000, 500_000, 64 << 20, [], Attempts: attempts), default);
        }

        return build;
    }

    /// <summary>Adds a small text file to the account's view as a content-addressed path.</summary>
    protected async Task<StorePath> PathAsync(string account, string name, string text)
    {
        using var view = await Store.OpenViewAsync(account, default);
        var info = await view.AddContentAddressedAsync(name, ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
            new MemoryStream(Encoding.UTF8.GetBytes(text)), new SortedSet<StorePath>(), false, default);
        return info.Path;
    }

    protected async Task<(int Status, string Body, string? ContentType)> SendAsync(HttpMethod method, string path, string? token, string? json = null)
    {
        using var request = new HttpRequestMessage(method, path);
        if (token is not null)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }

        if (json is not null)
        {
            request.Content = new StringContent(json, Encoding.UTF8, "application/json");
        }

        using var response = await Http.SendAsync(request, TestContext.Current.CancellationToken);
        return ((int)response.StatusCode, await response.Content.ReadAsStringAsync(TestContext.Current.CancellationToken), response.Content.Headers.ContentType?.MediaType);
    }

    /// <summary>The web application's services of a kind (what the tests inspect: the endpoints it mapped).</summary>
    protected IEnumerable<T> Services<T>() => (IEnumerable<T>)_app.Services.GetService(typeof(IEnumerable<T>))!;

    protected Task<(int Status, string Body, string? ContentType)> GetAsync(string path, string? token) => SendAsync(HttpMethod.Get, path, token);
}
