using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using Kiln.Agent;
using Kiln.Farm;
using Kiln.Nix.Derivations;
using Kiln.Nix.Hashing;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Scheduler.Queue;
using Kiln.Store.Accounts;
using Kiln.Store.Blobs;
using Kiln.Store.Metadata.Sqlite;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Scheduler.Tests;

/// <summary>
/// The agent protocol's server side over real HTTP (Kestrel on loopback), with a real SQLite database and blob
/// directory: tokens, the inputs a lease may fetch, outputs checked against what was put, malformed messages, lost
/// agents and late results. Each test performs the misbehaviour it guards against.
/// </summary>
public sealed class AgentGatewayTests : IAsyncLifetime
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    private readonly TempDir _temp = new();
    private readonly ConcurrentQueue<string> _log = new();
    private SqliteMetadataStore _metadata = null!;
    private DiskBlobStore _blobs = null!;
    private InMemoryJobQueue _queue = null!;
    private AgentGateway _gateway = null!;
    private WebApplication _app = null!;
    private Uri _root = null!;
    private string _token = "";

    public async ValueTask InitializeAsync()
    {
        _metadata = new SqliteMetadataStore(_temp["kiln.db"]);
        await _metadata.MigrateAsync(default);
        _blobs = new DiskBlobStore(_temp["blobs"], fsync: false);
        _queue = new InMemoryJobQueue(TimeSpan.FromSeconds(2));
        _gateway = new AgentGateway(_queue, _metadata, _blobs, new AgentGatewayOptions
        {
            FrontDoor = "test",
            AgentTimeout = TimeSpan.FromSeconds(2),
            PollTime = TimeSpan.FromSeconds(1),
            TokenCacheTime = TimeSpan.Zero,
        }, NullLogger.Instance);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        _app = builder.Build();
        _app.Run(_gateway.HandleAsync);
        await _app.StartAsync();
        _root = new Uri(_app.Urls.First() + AgentWire.Root + "/");
        _token = AgentToken.Generate();
        await _metadata.AddAgentTokenAsync("farm", AgentToken.Hash(_token), default);
    }

    public async ValueTask DisposeAsync()
    {
        await _gateway.DisposeAsync();
        await _app.DisposeAsync();
        _queue.Dispose();
        await _metadata.DisposeAsync();
        _temp.Dispose();
    }

    /// <summary>An agent's HTTP conversation, as <c>kiln agent</c> has it.</summary>
    private sealed class Agent : IDisposable
    {
        private readonly HttpClient _http;

        public Agent(Uri root, string token, string name)
        {
            Name = name;
            _http = new HttpClient { BaseAddress = root, Timeout = Patience };
            _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }

        public string Name { get; }

        public string Session { get; private set; } = "";

        public async Task<HttpResponseMessage> HelloAsync(string system = "x86_64-linux")
        {
            var response = await _http.PostAsJsonAsync("hello", new HelloMessage(Name, [system], [], 2, 4, 1 << 30, 0, "test"), AgentJson.Default.HelloMessage);
            if (response.IsSuccessStatusCode)
            {
                Session = (await response.Content.ReadFromJsonAsync(AgentJson.Default.WelcomeMessage))!.Session;
                _http.DefaultRequestHeaders.Remove(AgentWire.SessionHeader);
                _http.DefaultRequestHeaders.Add(AgentWire.SessionHeader, Session);
            }

            return response;
        }

        public async Task<JobMessage?> ClaimAsync()
        {
            var deadline = DateTime.UtcNow + Patience;
            while (DateTime.UtcNow < deadline)
            {
                using var response = await _http.PostAsync("claim", null);
                Assert.True(response.IsSuccessStatusCode, $"claim: {response.StatusCode}");
                if (response.StatusCode == HttpStatusCode.OK)
                {
                    return await response.Content.ReadFromJsonAsync(AgentJson.Default.JobMessage);
                }
            }

            return null;
        }

        public Task<HttpResponseMessage> HeartbeatAsync(params string[] leases) =>
            _http.PostAsJsonAsync("heartbeat", new HeartbeatMessage(leases, leases.Length, 0), AgentJson.Default.HeartbeatMessage);

        public Task<HttpResponseMessage> PostRawAsync(string path, string body) =>
            _http.PostAsync(path, new StringContent(body, Encoding.UTF8, "application/json"));

        public Task<HttpResponseMessage> GetAsync(string path) => _http.GetAsync(path);

        public Task<HttpResponseMessage> PutNarAsync(string lease, byte[] nar) =>
            _http.PutAsync($"leases/{lease}/outputs/{NixHash.Compute(NixHashAlgorithm.Sha256, nar).ToNix32()}", new ByteArrayContent(nar));

        public Task<HttpResponseMessage> CompleteAsync(string lease, BuildOutcome outcome) =>
            _http.PostAsJsonAsync($"leases/{lease}/complete", AgentWire.ToMessage(outcome), AgentJson.Default.OutcomeMessage);

        public void Dispose() => _http.Dispose();
    }

    private sealed class Log(ConcurrentQueue<string> lines) : IBuildLog
    {
        public void Running()
        {
        }

        public void Line(string line) => lines.Enqueue(line);
    }

    private static StorePath Path(string name) => StorePath.FromHash(NixHash.Compute(NixHashAlgorithm.Sha256, name).Digest[..20], name);

    private async Task<(NixHash Hash, long Size, StorePath Path)> AddBlobAsync(string name, string contents)
    {
        var nar = NarBuilder.Start().File(contents).ToArray();
        await using var writer = _blobs.CreateWriter();
        writer.Write(nar);
        var hash = await writer.CompleteAsync(default);
        await writer.CommitAsync(default);
        return (hash, nar.Length, Path(name));
    }

    // A job whose one output is input-addressed at a known path, with the given inputs.
    private JobTicket Offer(StorePath output, params (NixHash Hash, long Size, StorePath Path)[] inputs)
    {
        var derivation = new Derivation { Name = output.Name, Platform = "x86_64-linux", Builder = "/bin/sh" };
        derivation.Outputs["out"] = DerivationOutput.InputAddressed(output);
        return Offer(derivation, inputs);
    }

    private JobTicket Offer(Derivation derivation, params (NixHash Hash, long Size, StorePath Path)[] inputs)
    {
        var output = derivation.Outputs.Values.First().StorePath!.Value;
        var job = new BuildJob
        {
            DrvPath = Path(output.Name + ".drv"),
            Derivation = derivation,
            Inputs = inputs.Select(i => new BuildInput(i.Path, i.Hash, i.Size, [])).ToList(),
        };
        return _queue.Offer(new JobOffer(7, job, new JobRequirements("x86_64-linux", new SortedSet<string>()), new Log(_log)));
    }

    private static BuildOutcome Built(StorePath output, byte[] nar, params StorePath[] references) => new()
    {
        Outputs = [Output("out", output, nar, references)],
        StartTime = DateTimeOffset.UtcNow,
        StopTime = DateTimeOffset.UtcNow,
    };

    private static BuiltOutput Output(string name, StorePath path, byte[] nar, params StorePath[] references) =>
        new(name, path, NixHash.Compute(NixHashAlgorithm.Sha256, nar), nar.Length, references, null);

    private static async Task ExpectAsync(HttpStatusCode expected, Task<HttpResponseMessage> request)
    {
        using var response = await request;
        Assert.True(expected == response.StatusCode, $"{response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
    }

    [Fact]
    public async Task An_agent_with_a_wrong_or_revoked_token_is_refused()
    {
        using var stranger = new Agent(_root, AgentToken.Generate(), "stranger");
        Assert.Equal(HttpStatusCode.Unauthorized, (await stranger.HelloAsync()).StatusCode);

        // An account's access token is not an agent token, even a valid one.
        using var account = new Agent(_root, AccessToken.Generate(), "account");
        Assert.Equal(HttpStatusCode.Unauthorized, (await account.HelloAsync()).StatusCode);

        using var agent = new Agent(_root, _token, "one");
        Assert.Equal(HttpStatusCode.OK, (await agent.HelloAsync()).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await agent.HeartbeatAsync()).StatusCode);
        Assert.True(await _metadata.RevokeAgentTokenAsync("farm", default));
        Assert.Equal(HttpStatusCode.Unauthorized, (await agent.HeartbeatAsync()).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await agent.HelloAsync()).StatusCode);
    }

    [Fact]
    public async Task An_agent_fetches_only_the_input_NARs_its_lease_names()
    {
        var input = await AddBlobAsync("input-1", "named by the lease");
        var secret = await AddBlobAsync("someone-elses", "not named by any lease");
        using var agent = new Agent(_root, _token, "one");
        await agent.HelloAsync();
        var ticket = Offer(Path("out-1"), input);
        var job = await agent.ClaimAsync();
        Assert.NotNull(job);
        Assert.Equal(input.Path.FullPath, Assert.Single(job.Inputs).Path);

        using var named = await agent.GetAsync($"leases/{job.Lease}/nars/{input.Hash.ToNix32()}");
        Assert.Equal(HttpStatusCode.OK, named.StatusCode);
        Assert.Equal(NarBuilder.Start().File("named by the lease").ToArray(), await named.Content.ReadAsByteArrayAsync());

        // The gateway remembers what the agent now holds, for placing later jobs that need it.
        var later = new JobOffer(8, new BuildJob
        {
            DrvPath = Path("later.drv"),
            Derivation = new Derivation { Name = "later", Platform = "x86_64-linux", Builder = "/bin/sh" },
            Inputs = [new BuildInput(input.Path, input.Hash, input.Size, []), new BuildInput(secret.Path, secret.Hash, secret.Size, [])]
        },
            new JobRequirements("x86_64-linux", new SortedSet<string>()), new Log(_log));
        var info = new AgentInfo("one", new SortedSet<string> { "x86_64-linux" }, new SortedSet<string>(), 2);
        Assert.Equal(input.Size, _gateway.CachedBytes(info, later));
        Assert.Equal(0, _gateway.CachedBytes(info with { Name = "two" }, later));
        using var other = await agent.GetAsync($"leases/{job.Lease}/nars/{secret.Hash.ToNix32()}");
        Assert.Equal(HttpStatusCode.Forbidden, other.StatusCode);
        Assert.DoesNotContain("not named", await other.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        // Another agent with the same token cannot use this agent's lease.
        using var second = new Agent(_root, _token, "two");
        await second.HelloAsync();
        Assert.Equal(HttpStatusCode.Gone, (await second.GetAsync($"leases/{job.Lease}/nars/{input.Hash.ToNix32()}")).StatusCode);
        ticket.Cancel();
    }

    [Fact]
    public async Task An_outcome_is_accepted_only_for_outputs_put_under_the_lease_with_the_references_they_have()
    {
        var input = await AddBlobAsync("input-2", "an input");
        using var agent = new Agent(_root, _token, "one");
        await agent.HelloAsync();
        var output = Path("out-2");
        var ticket = Offer(output, input);
        var job = (await agent.ClaimAsync())!;
        var nar = NarBuilder.Start().File($"built with {input.Path.FullPath}").ToArray();

        // Claimed without being put: refused, and the job goes back to the queue.
        using (var unput = await agent.CompleteAsync(job.Lease, Built(output, nar, input.Path)))
        {
            Assert.Equal(HttpStatusCode.BadRequest, unput.StatusCode);
        }

        job = (await agent.ClaimAsync())!;
        Assert.Contains(_log, l => l.Contains("reported outputs it did not deliver", StringComparison.Ordinal) && l.Contains("attempt 2 of 3", StringComparison.Ordinal));

        // A NAR that is not one, or not the hash its URL names: refused, nothing kept.
        using (var garbage = await agent.PutNarAsync(job.Lease, Encoding.UTF8.GetBytes("not a nar")))
        {
            Assert.Equal(HttpStatusCode.BadRequest, garbage.StatusCode);
        }

        using (var put = await agent.PutNarAsync(job.Lease, nar))
        {
            Assert.Equal(HttpStatusCode.NoContent, put.StatusCode);
        }

        // The references must be what the scan found: hiding one is refused.
        using (var hidden = await agent.CompleteAsync(job.Lease, Built(output, nar)))
        {
            Assert.Equal(HttpStatusCode.BadRequest, hidden.StatusCode);
        }

        job = (await agent.ClaimAsync())!;
        using (var put = await agent.PutNarAsync(job.Lease, nar))
        {
            Assert.Equal(HttpStatusCode.NoContent, put.StatusCode);
        }

        using (var done = await agent.CompleteAsync(job.Lease, Built(output, nar, input.Path)))
        {
            Assert.Equal(HttpStatusCode.NoContent, done.StatusCode);
        }

        var outcome = await ticket.Completion.WaitAsync(Patience);
        Assert.True(outcome.Succeeded);
        Assert.Equal("one", outcome.Agent);
        Assert.Equal([input.Path], Assert.Single(outcome.Outputs).References);
        Assert.True(await _blobs.HasAsync(outcome.Outputs[0].NarHash, default));
    }

    [Fact]
    public async Task A_malformed_message_ends_that_agents_session_and_nothing_else()
    {
        using var bad = new Agent(_root, _token, "bad");
        using var good = new Agent(_root, _token, "good");
        await bad.HelloAsync();
        await good.HelloAsync();
        var ticket = Offer(Path("out-3"));
        var job = (await bad.ClaimAsync())!;

        using (var garbage = await bad.PostRawAsync("heartbeat", "{\"leases\": 12"))
        {
            Assert.Equal(HttpStatusCode.BadRequest, garbage.StatusCode);
        }

        Assert.Equal(HttpStatusCode.NotFound, (await bad.HeartbeatAsync(job.Lease)).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await good.HeartbeatAsync()).StatusCode);

        // Its job went back to the queue and the other agent gets it; a malformed hello is refused as well.
        var again = (await good.ClaimAsync())!;
        Assert.Equal(job.DrvPath, again.DrvPath);
        using (var hello = await bad.PostRawAsync("hello", "{\"name\": \"../../etc\", \"systems\": [], \"slots\": 0}"))
        {
            Assert.Equal(HttpStatusCode.BadRequest, hello.StatusCode);
        }

        ticket.Cancel();
    }

    [Fact]
    public async Task A_lost_agents_job_runs_elsewhere_and_its_late_result_is_discarded()
    {
        using var lost = new Agent(_root, _token, "lost");
        using var other = new Agent(_root, _token, "other");
        await lost.HelloAsync();
        var output = Path("out-4");
        var ticket = Offer(output);
        var first = (await lost.ClaimAsync())!;

        // "lost" goes silent; "other" keeps claiming (and so heartbeating its session) until the job comes back.
        await other.HelloAsync();
        var second = (await other.ClaimAsync())!;
        Assert.Equal(first.DrvPath, second.DrvPath);
        Assert.Contains(_log, l => l.Contains("(lost)", StringComparison.Ordinal) && l.Contains("again on another agent", StringComparison.Ordinal));

        var nar = NarBuilder.Start().File("the second agent's").ToArray();
        Assert.Equal(HttpStatusCode.NoContent, (await other.PutNarAsync(second.Lease, nar)).StatusCode);
        Assert.Equal(HttpStatusCode.NoContent, (await other.CompleteAsync(second.Lease, Built(output, nar))).StatusCode);

        // The lost agent comes back with its result: its session is gone, and so is its lease. (The queue's lease lapse
        // and the gateway's sweep of silent sessions are separate timers: wait for the sweep, or the race decides.)
        var swept = System.Diagnostics.Stopwatch.StartNew();
        while (_gateway.Connected.Any(a => a.Name == "lost"))
        {
            Assert.True(swept.Elapsed < Patience, "the silent agent's session was never dropped");
            await Task.Delay(50);
        }

        var late = NarBuilder.Start().File("the lost agent's").ToArray();
        Assert.Equal(HttpStatusCode.NotFound, (await lost.CompleteAsync(first.Lease, Built(output, late))).StatusCode);
        await lost.HelloAsync();
        Assert.Equal(HttpStatusCode.Gone, (await lost.CompleteAsync(first.Lease, Built(output, late))).StatusCode);

        var outcome = await ticket.Completion.WaitAsync(Patience);
        Assert.Equal("other", outcome.Agent);
        Assert.Equal(NixHash.Compute(NixHashAlgorithm.Sha256, nar), outcome.Outputs[0].NarHash);
        var agents = await _metadata.ListAgentsAsync(default);
        Assert.Equal(["lost", "other"], agents.Select(a => a.Name));
    }

    [Fact]
    public async Task A_success_must_name_every_output_once_and_only_references_the_scan_found_among_inputs_and_outputs()
    {
        var input = await AddBlobAsync("input-5", "an input");
        using var agent = new Agent(_root, _token, "one");
        await agent.HelloAsync();
        var (outPath, devPath) = (Path("two-outputs"), Path("two-outputs-dev"));
        var derivation = new Derivation { Name = "two-outputs", Platform = "x86_64-linux", Builder = "/bin/sh" };
        derivation.Outputs["out"] = DerivationOutput.InputAddressed(outPath);
        derivation.Outputs["dev"] = DerivationOutput.InputAddressed(devPath);
        var ticket = Offer(derivation, input);
        var (outNar, devNar) = (NarBuilder.Start().File("out").ToArray(), NarBuilder.Start().File("dev").ToArray());
        var stranger = Path("someone-elses-path");
        BuildOutcome Outcome(params BuiltOutput[] outputs) => new() { Outputs = outputs, StartTime = DateTimeOffset.UtcNow, StopTime = DateTimeOffset.UtcNow };

        var attacks = new[]
        {
            Outcome(Output("out", outPath, outNar)), // dev left out
            Outcome(Output("out", outPath, outNar), Output("out", outPath, outNar)), // out twice
            Outcome(Output("out", outPath, outNar), Output("dev", devPath, devNar, stranger)), // a reference the NAR does not have
            Outcome(Output("out", devPath, outNar), Output("dev", outPath, devNar)), // swapped paths
            BuildOutcome.Failed(BuildFailureKind.PermanentFailure, "failed") with { Outputs = [Output("out", outPath, outNar)] }, // a failure with outputs
        };
        foreach (var attack in attacks)
        {
            var job = (await agent.ClaimAsync())!;
            await ExpectAsync(HttpStatusCode.NoContent, agent.PutNarAsync(job.Lease, outNar));
            await ExpectAsync(HttpStatusCode.NoContent, agent.PutNarAsync(job.Lease, devNar));
            await ExpectAsync(HttpStatusCode.BadRequest, agent.CompleteAsync(job.Lease, attack));
            if (attack == attacks[2])
            {
                // Each refusal uses up an attempt: after three the build fails (an infrastructure failure, not the
                // builder's), and the rest need another job.
                var failed = await ticket.Completion.WaitAsync(Patience);
                Assert.Equal(BuildFailureKind.MiscFailure, failed.Failure);
                Assert.Contains("3 attempts", failed.ErrorMessage, StringComparison.Ordinal);
                ticket = Offer(derivation, input);
            }
        }

        // One more NAR than outputs is refused too.
        var last = (await agent.ClaimAsync())!;
        await ExpectAsync(HttpStatusCode.NoContent, agent.PutNarAsync(last.Lease, outNar));
        await ExpectAsync(HttpStatusCode.NoContent, agent.PutNarAsync(last.Lease, devNar));
        await ExpectAsync(HttpStatusCode.NoContent, agent.PutNarAsync(last.Lease, devNar)); // the same again is fine
        await ExpectAsync(HttpStatusCode.Conflict, agent.PutNarAsync(last.Lease, NarBuilder.Start().File("a third").ToArray()));
        await ExpectAsync(HttpStatusCode.NoContent, agent.CompleteAsync(last.Lease, Outcome(Output("out", outPath, outNar), Output("dev", devPath, devNar))));
        Assert.True((await ticket.Completion.WaitAsync(Patience)).Succeeded);
    }

    [Fact]
    public async Task A_fixed_output_is_checked_against_its_hash_refers_to_nothing_and_carries_the_content_address_Kiln_verified()
    {
        var input = await AddBlobAsync("input-6", "an input");
        using var agent = new Agent(_root, _token, "one");
        await agent.HelloAsync();
        JobTicket Fixed(string contents, out StorePath path, out byte[] nar)
        {
            var hash = NixHash.Compute(NixHashAlgorithm.Sha256, contents);
            path = StorePathComputer.MakeFixedOutputPath("fetched", new ContentAddress(ContentAddressMethod.Flat, hash));
            nar = NarBuilder.Start().File(contents).ToArray();
            var derivation = new Derivation { Name = "fetched", Platform = "x86_64-linux", Builder = "/bin/sh" };
            derivation.Outputs["out"] = new DerivationOutput(path.FullPath, "sha256", hash.ToBase16());
            return Offer(derivation, input);
        }

        // Contents other than the hash fixes: refused as they are put.
        var ticket = Fixed("the real download", out var path, out var nar);
        var job = (await agent.ClaimAsync())!;
        await ExpectAsync(HttpStatusCode.BadRequest, agent.PutNarAsync(job.Lease, NarBuilder.Start().File("something else").ToArray()));

        // A fixed output that smuggles a reference to an input: refused.
        ticket.Cancel();
        var smuggler = Fixed($"see {input.Path.FullPath}", out var smugglerPath, out var smugglerNar);
        job = (await agent.ClaimAsync())!;
        await ExpectAsync(HttpStatusCode.NoContent, agent.PutNarAsync(job.Lease, smugglerNar));
        await ExpectAsync(HttpStatusCode.BadRequest, agent.CompleteAsync(job.Lease, Built(smugglerPath, smugglerNar, input.Path)));
        smuggler.Cancel();

        // The right one, reported with a made-up content address: registered with the verified one.
        ticket = Fixed("the real download", out path, out nar);
        job = (await agent.ClaimAsync())!;
        await ExpectAsync(HttpStatusCode.NoContent, agent.PutNarAsync(job.Lease, nar));
        var lying = Built(path, nar);
        lying = lying with { Outputs = [lying.Outputs[0] with { ContentAddress = new ContentAddress(ContentAddressMethod.Recursive, NixHash.Compute(NixHashAlgorithm.Sha256, "x")) }] };
        await ExpectAsync(HttpStatusCode.NoContent, agent.CompleteAsync(job.Lease, lying));
        var outcome = await ticket.Completion.WaitAsync(Patience);
        Assert.Equal(new ContentAddress(ContentAddressMethod.Flat, NixHash.Compute(NixHashAlgorithm.Sha256, "the real download")), outcome.Outputs[0].ContentAddress);
    }

    [Fact]
    public async Task An_agent_cannot_take_another_tokens_agent_name_nor_more_jobs_than_its_slots_nor_send_nulls_or_huge_messages()
    {
        using var owner = new Agent(_root, _token, "builder");
        await owner.HelloAsync();
        var otherToken = AgentToken.Generate();
        await _metadata.AddAgentTokenAsync("other", AgentToken.Hash(otherToken), default);
        using var hijacker = new Agent(_root, otherToken, "builder");
        await ExpectAsync(HttpStatusCode.Conflict, hijacker.HelloAsync());
        await ExpectAsync(HttpStatusCode.OK, owner.HeartbeatAsync());

        // Two slots: a third claim while two jobs are held answers at once, with nothing.
        var tickets = Enumerable.Range(0, 3).Select(i => Offer(Path($"slot-{i}"))).ToList();
        var first = (await owner.ClaimAsync())!;
        var second = (await owner.ClaimAsync())!;
        var watch = System.Diagnostics.Stopwatch.StartNew();
        using (var third = await owner.PostRawAsync("claim", ""))
        {
            Assert.Equal(HttpStatusCode.NoContent, third.StatusCode);
        }

        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(1), $"the over-slot claim waited {watch.Elapsed}");

        // A null where the protocol has a string is malformed (and ends the session), not a crash in a log reader.
        await ExpectAsync(HttpStatusCode.BadRequest, owner.PostRawAsync($"leases/{first.Lease}/log", "{\"running\": true, \"lines\": null}"));
        await owner.HelloAsync();
        await ExpectAsync(HttpStatusCode.RequestEntityTooLarge, owner.PostRawAsync("heartbeat", "{\"leases\": [\"" + new string('x', 1 << 20) + "\"], \"slotsBusy\": 0, \"inputCacheBytes\": 0}"));
        var claimed = (await owner.ClaimAsync())!;
        Assert.Contains(claimed.DrvPath, tickets.Select((_, i) => Path($"slot-{i}.drv").FullPath));
        foreach (var ticket in tickets)
        {
            ticket.Cancel();
        }
    }
}
