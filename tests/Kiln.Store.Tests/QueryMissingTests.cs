using System.Reflection;
using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;
using Kiln.Store.Metadata;

namespace Kiln.Store.Tests;

/// <summary>
/// QueryMissing (what a no-op CI run asks first): a constant number of metadata round trips per level of the graph,
/// whatever its width — a 1,000-derivation closure costs what a 100-derivation one of the same depth does — and the
/// upstream caches' warnings reach the client.
/// </summary>
public sealed class QueryMissingTests : IAsyncLifetime
{
    private readonly TempDir _temp = new();
    private CountingMetadata _counter = null!;
    private KilnStore _store = null!;

    public async ValueTask InitializeAsync()
    {
        var metadata = MetadataStores.Open("sqlite://" + _temp["kiln.db"]);
        _counter = CountingMetadata.Wrap(metadata, out var counted);
        _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"] }, counted, default);
    }

    public async ValueTask DisposeAsync()
    {
        await _store.DisposeAsync();
        _temp.Dispose();
    }

    // A DAG of `depth` layers of `width` derivations, each depending on the one below (by position), written into the
    // view as evaluation does; returns the top layer.
    private static async Task<List<StorePath>> DagAsync(StoreView view, string salt, int depth, int width)
    {
        var derivations = new Dictionary<StorePath, Derivation>();
        var hasher = new DerivationHasher(p => derivations[p]);
        var layer = new List<StorePath>();
        for (var l = 0; l < depth; l++)
        {
            var next = new List<StorePath>();
            for (var i = 0; i < width; i++)
            {
                var name = $"{salt}-{l}-{i}";
                var derivation = new Derivation { Name = name, Platform = "x86_64-linux", Builder = "/bin/sh" };
                derivation.Outputs["out"] = new DerivationOutput("", "", "");
                derivation.Environment["name"] = name;
                derivation.Environment["out"] = "";
                if (l > 0)
                {
                    derivation.InputDerivations[layer[i]] = new SortedSet<string> { "out" };
                }

                var output = hasher.ComputeOutputPaths(derivation)["out"];
                derivation.Outputs["out"] = new DerivationOutput(output, "", "");
                derivation.Environment["out"] = output;
                var info = await view.AddContentAddressedAsync($"{name}.drv", ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256"),
                    new MemoryStream(ATerm.PrintBytes(derivation)), new SortedSet<StorePath>(derivation.InputDerivations.Keys), false, default);
                derivations[info.Path] = derivation;
                next.Add(info.Path);
            }

            layer = next;
        }

        return layer;
    }

    private async Task<(MissingPaths Missing, int Queries)> CountAsync(StoreView view, IReadOnlyList<StorePath> targets)
    {
        var before = _counter.Calls;
        var missing = await view.QueryMissingAsync(targets.Select(t => (DerivedPath)new DerivedPath.Built(t, null)).ToList(), new ListLog(), default);
        return (missing, _counter.Calls - before);
    }

    [Fact]
    public async Task A_thousand_derivations_cost_the_same_metadata_round_trips_as_a_hundred()
    {
        using var view = await _store.OpenViewAsync("ci", default);
        var narrow = await DagAsync(view, "narrow", depth: 10, width: 10);
        var wide = await DagAsync(view, "wide", depth: 10, width: 100);

        await CountAsync(view, narrow); // the view reads its account's settings once, on first use
        var (narrowMissing, narrowQueries) = await CountAsync(view, narrow);
        var (wideMissing, wideQueries) = await CountAsync(view, wide);
        Assert.Equal(100, narrowMissing.WillBuild.Count);
        Assert.Equal(1_000, wideMissing.WillBuild.Count);
        Assert.Empty(wideMissing.Unknown);
        Assert.Equal(narrowQueries, wideQueries);
        Assert.True(wideQueries <= 10 * 5, $"{wideQueries} metadata round trips for 10 levels");
    }

    [Fact]
    public async Task Warnings_from_upstream_caches_reach_the_client()
    {
        using (var settings = await _store.OpenViewAsync("ci", default))
        {
            // Nothing listens on port 1: the cache fails at once.
            await _store.Settings.SetUpstreamSettingsAsync(settings.AccountId, "http://127.0.0.1:1", "", null, default);
        }

        using var view = await _store.OpenViewAsync("ci", default);
        var top = await DagAsync(view, "warned", depth: 1, width: 1);
        var log = new ListLog();
        var missing = await view.QueryMissingAsync([new DerivedPath.Built(top[0], null)], log, default);
        Assert.Single(missing.WillBuild);
        Assert.Contains(log.Lines, l => l.Contains("substituter 'http://127.0.0.1:1/' failed", StringComparison.Ordinal));
    }

    // Evaluation re-adds every .drv on each run, and a small one already stored is answered from a look at the metadata.
    // The session holds the path (a temporary root) before that look, as Nix does: held after it, a collection in
    // between could take the path the client is then told is valid.
    [Fact]
    public async Task A_small_add_of_a_stored_path_holds_it_before_it_looks()
    {
        var text = "held before the look " + Guid.NewGuid();
        var method = ContentAddressMethodAndAlgorithm.ParseCamString("text:sha256");
        var first = await _store.OpenViewAsync("alice", default);
        var stored = await first.AddContentAddressedAsync("held.txt", method, new MemoryStream(System.Text.Encoding.UTF8.GetBytes(text)), new SortedSet<StorePath>(), false, default);

        var session = await _store.OpenViewAsync("alice", default);
        var lookedHeld = new List<bool>();
        _counter.Before = (name, args) =>
        {
            if (name == nameof(IPathMetadata.GetPathsAsync) && args?[1] is IReadOnlyCollection<StorePath> paths && paths.Contains(stored.Path))
            {
                lookedHeld.Add(_store.TempRoots.For(session.AccountId).Count(r => r.Value == stored.Path) == 2); // the first session's, and this one's
            }
        };
        var again = await session.AddContentAddressedAsync("held.txt", method, new MemoryStream(System.Text.Encoding.UTF8.GetBytes(text)), new SortedSet<StorePath>(), false, default);
        _counter.Before = null;
        Assert.Equal(stored.Path, again.Path);
        Assert.Equal([true], lookedHeld);
    }

    /// <summary>Counts every call made through the metadata port (each is one or more statements on one connection).</summary>
    public class CountingMetadata : DispatchProxy
    {
        private IMetadataStore _inner = null!;
        private int _calls;

        public int Calls => Volatile.Read(ref _calls);

        /// <summary>Called with each call's method name and arguments before it is made.</summary>
        public Action<string, object?[]?>? Before { get; set; }

        public static CountingMetadata Wrap(IMetadataStore inner, out IMetadataStore counted)
        {
            counted = Create<IMetadataStore, CountingMetadata>();
            var proxy = (CountingMetadata)(object)counted;
            proxy._inner = inner;
            return proxy;
        }

        protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
        {
            ArgumentNullException.ThrowIfNull(targetMethod);
            if (typeof(Task).IsAssignableFrom(targetMethod.ReturnType) && targetMethod.Name != nameof(IMetadataStore.MigrateAsync))
            {
                Interlocked.Increment(ref _calls);
            }

            Before?.Invoke(targetMethod.Name, args);
            try
            {
                return targetMethod.Invoke(_inner, args);
            }
            catch (TargetInvocationException e) when (e.InnerException is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
                throw;
            }
        }
    }
}
