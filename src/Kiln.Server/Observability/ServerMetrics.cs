using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using Kiln.Protocol;
using Kiln.Scheduler.Queue;
using Kiln.Store;
using Kiln.Store.Metadata;

namespace Kiln.Server.Observability;

/// <summary>
/// The gauges of one running server, observed when <c>/metrics</c> is scraped: the job queue (waiting, leased),
/// the agents and stock builders registered with their slots (busy, free), and the store's size. The counters and
/// histograms are <see cref="KilnMetrics"/>'s, recorded where things happen. Disposed with the server (its meter's
/// instruments go with it).
/// </summary>
public sealed class ServerMetrics : IDisposable
{
    // The store's size is a scan of every path record: read at most this often, off the scrape's thread.
    private static readonly TimeSpan TotalsAge = TimeSpan.FromSeconds(60);

    private readonly Meter _meter = new(KilnMetrics.ServerMeterName);
    private readonly KilnStore _store;
    private volatile StrongBox<StoreTotals> _totals = new(default); // (swapped whole: never read half-written)
    private long _nextRead; // Environment.TickCount64 when the store's size is due to be read again (0: now)
    private int _reading;

    public ServerMetrics(KilnStore store, InMemoryJobQueue queue)
    {
        ArgumentNullException.ThrowIfNull(queue);
        _store = store;
        _meter.CreateObservableGauge("kiln.queue.jobs", () =>
        {
            var now = queue.Snapshot();
            return new[] { Measure(now.Waiting, "state", "waiting"), Measure(now.Leased, "state", "running") };
        }, "{job}", "Jobs in the build queue, by state");
        _meter.CreateObservableGauge("kiln.agents", () =>
        {
            var now = queue.Snapshot();
            return new[] { Measure(now.Agents, "kind", "agent"), Measure(now.StockBuilders, "kind", "stock-builder") };
        }, "{agent}", "Agents (the embedded one, kiln agents, stock Nix builders) registered, by kind");
        _meter.CreateObservableGauge("kiln.agent.slots", () =>
        {
            var now = queue.Snapshot();
            return new[] { Measure(now.BusySlots, "state", "busy"), Measure(Math.Max(0, now.Slots - now.BusySlots), "state", "free") };
        }, "{slot}", "Build slots of the registered agents, by state");
        _meter.CreateObservableGauge("kiln.store.paths", () => Totals().Paths, "{path}", "Path records in all views (a path several accounts hold counts once for each)");
        _meter.CreateObservableGauge("kiln.store.nars", () => Totals().Nars, "{nar}", "Distinct NARs the views name (content shared by views counts once)");
        _meter.CreateObservableGauge("kiln.store.size", () => Totals().NarBytes, "By", "Bytes of the distinct NARs the views name");
    }

    private static Measurement<long> Measure(long value, string tag, string tagValue) => new(value, new KeyValuePair<string, object?>(tag, tagValue));

    // The last figures read; a read older than TotalsAge starts another in the background (the first scrape shows zeros
    // until it is done: a gauge callback must not wait on the database).
    private StoreTotals Totals()
    {
        if (Environment.TickCount64 >= Interlocked.Read(ref _nextRead) && Interlocked.Exchange(ref _reading, 1) == 0)
        {
            _ = Task.Run(async () =>
            {
                try
                {
                    _totals = new(await _store.GetTotalsAsync(CancellationToken.None).ConfigureAwait(false));
                    Interlocked.Exchange(ref _nextRead, Environment.TickCount64 + (long)TotalsAge.TotalMilliseconds);
                }
#pragma warning disable CA1031 // a database away for a moment: the last figures stand, a later scrape tries again
                catch (Exception)
#pragma warning restore CA1031
                {
                    Interlocked.Exchange(ref _nextRead, Environment.TickCount64 + 10_000);
                }
                finally
                {
                    Volatile.Write(ref _reading, 0);
                }
            });
        }

        return _totals.Value;
    }

    /// <summary>Starts reading the store's size (at the server's start, so the first scrape has it; in the background).</summary>
    public void Start() => Totals();

    public void Dispose() => _meter.Dispose();
}
