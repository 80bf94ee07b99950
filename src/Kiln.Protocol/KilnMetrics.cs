using System.Diagnostics.Metrics;

namespace Kiln.Protocol;

/// <summary>
/// Every counter and histogram Kiln keeps, in one place (as <see cref="LogEvents"/> lists its log events): recorded
/// where things happen, exported by <c>kiln serve</c> at <c>/metrics</c> in Prometheus's text format (names there: dots
/// become underscores, the unit is appended, counters end in <c>_total</c>: <c>kiln.transfer.sent</c> in bytes is
/// <c>kiln_transfer_sent_bytes_total</c>). Tags only ever carry values from a small
/// fixed set (an outcome, a protocol, a kind of request): never a store path, an account or an agent's name, so the
/// number of series stays bounded whatever the load. Gauges of the server's state (queue, agents, store size) are
/// observed by the server itself (<c>Kiln.Server.ServerMetrics</c>).
/// </summary>
public static class KilnMetrics
{
    /// <summary>The meter's name; the server's exporter listens to it (and to <see cref="ServerMeterName"/>).</summary>
    public const string MeterName = "Kiln";

    /// <summary>The meter of the gauges one running server observes.</summary>
    public const string ServerMeterName = "Kiln.Server";

    private static readonly Meter Meter = new(MeterName, typeof(KilnMetrics).Assembly.GetName().Version?.ToString());

    // Builds run from a fraction of a second (a no-work derivation) to hours (a compiler).
    private static readonly double[] BuildSeconds = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400];

    // Waiting for a slot: nothing at all on an idle farm, minutes behind a busy account.
    private static readonly double[] WaitSeconds = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600];

    // Binary-cache requests: a cached narinfo in well under a millisecond, a large NAR in seconds.
    private static readonly double[] RequestSeconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60];

    /// <summary>Builds Kiln started: a derivation built once for everyone who asked for it (joins and reuses are not builds).</summary>
    public static readonly Counter<long> BuildsStarted = Meter.CreateCounter<long>("kiln.builds.started", "{build}", "Builds started");

    /// <summary>Builds ended, by <c>outcome</c>: <c>built</c>, or the failure's kind in Nix's words (<see cref="OutcomeTag"/>).</summary>
    public static readonly Counter<long> BuildsFinished = Meter.CreateCounter<long>("kiln.builds.finished", "{build}", "Builds finished, by outcome");

    /// <summary>How long builds ran (from start to end on their agent), by <c>outcome</c>: <c>built</c> or <c>failed</c>.</summary>
    public static readonly Histogram<double> BuildDuration = Meter.CreateHistogram("kiln.build.duration", "s", "Build duration",
        advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = BuildSeconds });

    /// <summary>Steps answered by a build that had already succeeded (for anyone), not built again.</summary>
    public static readonly Counter<long> BuildsReused = Meter.CreateCounter<long>("kiln.builds.reused", "{build}", "Steps answered by reusing an earlier build");

    /// <summary>Steps that joined a build already running for another request.</summary>
    public static readonly Counter<long> BuildsJoined = Meter.CreateCounter<long>("kiln.builds.joined", "{build}", "Steps that joined a running build");

    /// <summary>Steps whose outputs were substituted from an upstream cache instead of built.</summary>
    public static readonly Counter<long> BuildsSubstituted = Meter.CreateCounter<long>("kiln.builds.substituted", "{build}", "Steps answered by substitution");

    /// <summary>How long offered jobs waited in the queue before an agent claimed them (per lease: a job given back waits again).</summary>
    public static readonly Histogram<double> QueueWait = Meter.CreateHistogram("kiln.queue.wait", "s", "Time jobs waited for an agent",
        advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = WaitSeconds });

    /// <summary>Bytes clients sent Kiln, by <c>protocol</c> (<see cref="Protocols"/>).</summary>
    public static readonly Counter<long> BytesReceived = Meter.CreateCounter<long>("kiln.transfer.received", "By", "Bytes received from clients and agents, by protocol");

    /// <summary>Bytes Kiln sent clients, by <c>protocol</c> (<see cref="Protocols"/>).</summary>
    public static readonly Counter<long> BytesSent = Meter.CreateCounter<long>("kiln.transfer.sent", "By", "Bytes sent to clients and agents, by protocol");

    /// <summary>Protocol sessions open now, by <c>protocol</c>: <c>worker</c> (the socket and ssh-ng://) or <c>serve</c> (ssh://).</summary>
    public static readonly UpDownCounter<long> SessionsOpen = Meter.CreateUpDownCounter<long>("kiln.sessions.open", "{session}", "Protocol sessions open, by protocol");

    /// <summary>Protocol sessions started, by <c>protocol</c>.</summary>
    public static readonly Counter<long> Sessions = Meter.CreateCounter<long>("kiln.sessions", "{session}", "Protocol sessions started, by protocol");

    /// <summary>Binary-cache requests and how long each took, by <c>kind</c> (<see cref="HttpKinds"/>) and <c>status</c> class (<c>2xx</c>…).</summary>
    public static readonly Histogram<double> HttpRequestDuration = Meter.CreateHistogram("kiln.http.request.duration", "s", "Binary cache requests, by kind and status class",
        advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = RequestSeconds });

    /// <summary>Garbage collections run (by a client, an operator or the server; one per view collected).</summary>
    public static readonly Counter<long> GcRuns = Meter.CreateCounter<long>("kiln.gc.runs", "{run}", "Garbage collections run");

    /// <summary>Bytes of NARs garbage collections freed from views (content another view names stays in the blob store).</summary>
    public static readonly Counter<long> GcFreed = Meter.CreateCounter<long>("kiln.gc.freed", "By", "Bytes freed by garbage collection");

    /// <summary>The values the <c>protocol</c> tag takes.</summary>
    public static class Protocols
    {
        public const string Worker = "worker";
        public const string Serve = "serve";
        public const string Http = "http";
        public const string Agent = "agent";
    }

    /// <summary>The <c>protocol</c> tag, with one of <see cref="Protocols"/>' values.</summary>
    public static KeyValuePair<string, object?> ProtocolTag(string protocol) => new("protocol", protocol);

    /// <summary>The values the <c>kind</c> tag of binary-cache requests takes.</summary>
    public static class HttpKinds
    {
        public const string CacheInfo = "cache-info";
        public const string NarInfo = "narinfo";
        public const string Nar = "nar";
        public const string Log = "log";
        public const string Upload = "upload";
        public const string Other = "other";
    }

    /// <summary>A bounded tag value for a build's outcome: <c>built</c>, or the failure kind's name in lower case.</summary>
    public static string OutcomeTag(bool succeeded, string failureKind) =>
        succeeded ? "built" : failureKind.Length == 0 ? "failed" : failureKind.ToLowerInvariant();

    /// <summary>The status class of an HTTP answer (<c>2xx</c>, <c>4xx</c>…): five values, whatever the code.</summary>
    public static string StatusClass(int status) => status switch
    {
        < 200 => "1xx",
        < 300 => "2xx",
        < 400 => "3xx",
        < 500 => "4xx",
        _ => "5xx",
    };
}
