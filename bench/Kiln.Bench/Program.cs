using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;

// Kiln vs stock Nix on the same machine, in one run: NAR hashing (kiln nix hash-path vs nix-hash) and NAR
// serialisation (kiln nix dump-path vs nix-store --dump) of a ~1 GiB tree with the page cache warm, next to the
// machine's SHA-256 speed as the ceiling. Usage: dotnet run -c Release --project bench/Kiln.Bench -- [--size-mib N]
// [--runs N] [--keep DIR] [--kiln PATH]; bench/run.sh runs it on a ReadyToRun-published kiln, as one would install
// it. Figures only; no thresholds.
var sizeMib = ArgValue("--size-mib", 1024);
var runs = ArgValue("--runs", 3);
var kiln = Args("--kiln") ?? Path.Combine(AppContext.BaseDirectory, "kiln");
var root = Args("--keep") ?? Path.Combine(Path.GetTempPath(), $"kiln-bench-{Environment.ProcessId}");

Console.WriteLine($"Kiln NAR benchmark: tree of ~{sizeMib} MiB, best of {runs} runs, page cache warm");
Console.WriteLine($"machine: {Environment.ProcessorCount} cores, {RuntimeInfo()}");
Console.WriteLine($"nix: {Capture("nix-store", "--version").Trim()}; kiln: {kiln}");
Console.WriteLine();

var (small, large) = BuildTree(root, sizeMib);
try
{
    // Warm the page cache and learn the NAR sizes.
    var narSize = new Dictionary<string, long>();
    foreach (var dir in new[] { root, small, large })
    {
        narSize[dir] = long.Parse(Capture("bash", "-c", $"nix-store --dump '{dir}' | wc -c").Trim(), CultureInfo.InvariantCulture);
    }

    var ceiling = Sha256Ceiling();
    Console.WriteLine($"SHA-256 ceiling (.NET SHA256 over 1 MiB blocks in memory): {ceiling:F0} MiB/s");
    Console.WriteLine();
    Console.WriteLine($"{"workload",-34} {"NAR MiB",8} {"nix (MiB/s)",12} {"kiln (MiB/s)",13} {"kiln/nix",9} {"kiln/ceiling",13}");
    foreach (var (label, dir) in new[] { ("whole tree", root), ("small files only", small), ("large files only", large) })
    {
        var nixHash = Best(runs, () => Run("nix-hash", "--type", "sha256", "--base32", dir));
        var kilnHash = Best(runs, () => Run(kiln, "nix", "hash-path", "--type", "sha256", "--base32", dir));
        Row($"hash-path  ({label})", narSize[dir], nixHash, kilnHash, ceiling);
        var nixDump = Best(runs, () => Run("bash", "-c", $"nix-store --dump '{dir}' > /dev/null"));

        var kilnDump = Best(runs, () => Run("bash", "-c", $"'{kiln}' nix dump-path '{dir}' > /dev/null"));
        Row($"dump-path  ({label})", narSize[dir], nixDump, kilnDump, null);
    }

    // /dev/null accepts sendfile for free; a pipe into another process is what `| nix-store --restore` or ssh see.
    var nixPipe = Best(runs, () => Run("bash", "-c", $"nix-store --dump '{root}' | cat > /dev/null"));
    var kilnPipe = Best(runs, () => Run("bash", "-c", $"'{kiln}' nix dump-path '{root}' | cat > /dev/null"));
    Row("dump-path | cat  (whole tree)", narSize[root], nixPipe, kilnPipe, null);

    Console.WriteLine();
    Console.WriteLine($"hash results agree: {Capture("nix-hash", "--type", "sha256", "--base32", root).Trim() == Capture(kiln, "nix", "hash-path", root).Trim()}");
}
finally
{
    if (Args("--keep") is null)
    {
        Directory.Delete(root, recursive: true);
    }
}

return 0;

static void Row(string label, long narBytes, TimeSpan nix, TimeSpan kiln, double? ceiling)
{
    var nixRate = Rate(narBytes, nix);
    var kilnRate = Rate(narBytes, kiln);
    var vsCeiling = ceiling is { } c ? $"{kilnRate / c * 100,12:F0}%" : $"{"",13}";
    Console.WriteLine($"{label,-34} {narBytes / 1048576.0,8:F0} {nixRate,12:F0} {kilnRate,13:F0} {kilnRate / nixRate,8:F2}x {vsCeiling}");
}

static double Rate(long bytes, TimeSpan time) => bytes / 1048576.0 / time.TotalSeconds;

static TimeSpan Best(int runs, Func<TimeSpan> run) => Enumerable.Range(0, runs).Select(_ => run()).Min();

static TimeSpan Run(string program, params string[] args)
{
    var info = new ProcessStartInfo(program) { RedirectStandardOutput = true, UseShellExecute = false };
    foreach (var arg in args)
    {
        info.ArgumentList.Add(arg);
    }

    var watch = Stopwatch.StartNew();
    using var process = Process.Start(info)!;
    process.StandardOutput.BaseStream.CopyTo(Stream.Null);
    process.WaitForExit();
    watch.Stop();
    if (process.ExitCode != 0)
    {
        throw new InvalidOperationException($"{program} {string.Join(' ', args)} exited with {process.ExitCode}");
    }

    return watch.Elapsed;
}

static string Capture(string program, params string[] args)
{
    var info = new ProcessStartInfo(program) { RedirectStandardOutput = true, UseShellExecute = false };
    foreach (var arg in args)
    {
        info.ArgumentList.Add(arg);
    }

    using var process = Process.Start(info)!;
    var output = process.StandardOutput.ReadToEnd();
    process.WaitForExit();
    return output;
}

static double Sha256Ceiling()
{
    var block = new byte[1 << 20];
    RandomNumberGenerator.Fill(block);
    using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    var best = double.MaxValue;
    for (var round = 0; round < 3; round++)
    {
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < 1024; i++)
        {
            hash.AppendData(block);
        }

        hash.GetHashAndReset();
        best = Math.Min(best, watch.Elapsed.TotalSeconds);
    }

    return 1024 / best;
}

// ~20% of the bytes in many small files (1 B – 16 KiB, in nested directories), the rest in eight large files.
static (string Small, string Large) BuildTree(string root, int sizeMib)
{
    var small = Path.Combine(root, "small");
    var large = Path.Combine(root, "large");
    Directory.CreateDirectory(small);
    Directory.CreateDirectory(large);
    var random = new Random(1);
    var buffer = new byte[1 << 20];
    random.NextBytes(buffer);
    long smallBudget = sizeMib * 1048576L / 5, written = 0;
    var count = 0;
    while (written < smallBudget)
    {
        var dir = Path.Combine(small, $"d{count / 500:D3}", $"e{count / 50 % 10}");
        Directory.CreateDirectory(dir);
        var size = random.Next(4) == 0 ? random.Next(0, 64) : random.Next(64, 16384);
        File.WriteAllBytes(Path.Combine(dir, $"f{count:D6}.dat"), buffer.AsSpan(random.Next(0, buffer.Length - size), size).ToArray());
        if (count % 7 == 0)
        {
            File.SetUnixFileMode(Path.Combine(dir, $"f{count:D6}.dat"), (UnixFileMode)Convert.ToInt32("755", 8));
        }

        written += size;
        count++;
    }

    var largeEach = (sizeMib * 1048576L - smallBudget) / 8;
    for (var i = 0; i < 8; i++)
    {
        using var file = File.Create(Path.Combine(large, $"big{i}.bin"));
        for (long left = largeEach; left > 0; left -= buffer.Length)
        {
            buffer[0] = (byte)i;
            file.Write(buffer, 0, (int)Math.Min(left, buffer.Length));
        }
    }

    Console.WriteLine($"tree: {count} small files ({smallBudget / 1048576} MiB) and 8 large files ({largeEach * 8 / 1048576} MiB) in {root}");
    return (small, large);
}

static string RuntimeInfo() => $".NET {Environment.Version}, cpu flags: {(File.ReadAllText("/proc/cpuinfo").Contains(" sha_ni", StringComparison.Ordinal) ? "sha_ni" : "no sha_ni")}";

static string? Args(string name)
{
    var args = Environment.GetCommandLineArgs();
    var index = Array.IndexOf(args, name);
    return index >= 0 && index + 1 < args.Length ? args[index + 1] : null;
}

static int ArgValue(string name, int fallback) =>
    Args(name) is { } text ? int.Parse(text, CultureInfo.InvariantCulture) : fallback;
