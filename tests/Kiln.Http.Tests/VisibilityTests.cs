using System.Text;
using Kiln.Nix.Hashing;
using Kiln.Nix.Nar;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Nix.Tests.Support;
using Kiln.Protocol.Worker;
using Kiln.Store;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kiln.Http.Tests;

/// <summary>
/// Visibility, decided in one place (the store's callers and views), checked across every read path at once: each
/// row is (caller, whose path, what kind of path, operation) and whether the caller sees it. The worker and serve
/// protocols read through <see cref="IWorkerStore"/> (the sessions only translate), the HTTP cache through its real
/// request handler. Trust never widens visibility: a content-addressed or built path of another account is as invisible
/// as an uploaded one; a public account's paths are readable by anyone over HTTP; a log goes with its build.
/// </summary>
public sealed class VisibilityTests(VisibilityTests.World world) : IClassFixture<VisibilityTests.World>
{
    public enum Who
    {
        Alice,
        Bob,
        Anonymous,
    }

    public enum Owner
    {
        Alice,
        Bob,
        Public,
    }

    public enum Kind
    {
        Uploaded,
        ContentAddressed,
        Built,
    }

    public static TheoryData<Who, Owner, Kind, string, bool> Table()
    {
        var rows = new TheoryData<Who, Owner, Kind, string, bool>();
        string[] worker = ["QueryValidPaths", "QueryPathInfos", "QueryPathFromHashPart", "QueryReferrers", "QueryValidDerivers", "QueryAllValidPaths", "NarFromPath", "QueryMissing"];
        string[] http = ["narinfo", "nar", "ls", "log", "kept nar.xz"];
        foreach (var who in Enum.GetValues<Who>())
        {
            foreach (var owner in Enum.GetValues<Owner>())
            {
                foreach (var kind in Enum.GetValues<Kind>())
                {
                    var visibleOverHttp = who == Who.Anonymous ? owner == Owner.Public : (int)who == (int)owner;
                    foreach (var operation in who == Who.Anonymous ? http : [.. worker, .. http])
                    {
                        // Worker sessions are logins to an account: they read that account only, public or not.
                        var visible = http.Contains(operation) ? visibleOverHttp : (int)who == (int)owner;
                        rows.Add(who, owner, kind, operation, visible);
                    }
                }
            }
        }

        return rows;
    }

    [Theory]
    [MemberData(nameof(Table))]
    public async Task Who_sees_what(Who who, Owner owner, Kind kind, string operation, bool visible)
    {
        var path = world.Paths[(owner, kind)];
        var seen = operation switch
        {
            "narinfo" or "nar" or "ls" or "log" or "kept nar.xz" => await world.HttpAsync(who, operation, path),
            _ => await world.WorkerAsync(who, operation, path),
        };
        Assert.Equal(visible, seen);
    }

    /// <summary>Three accounts (alice and bob private, pub public), each holding an uploaded, a content-addressed and a built path.</summary>
    public sealed class World : IAsyncLifetime
    {
        private readonly TempDir _temp = new();
        private KilnStore _store = null!;
        private BinaryCache _cache = null!;
        private readonly Dictionary<Who, string> _tokens = [];

        public Dictionary<(Owner, Kind), Entry> Paths { get; } = [];

        /// <summary>A path of the world, with the things needed to ask for it every way.</summary>
        public sealed record Entry(StorePath Path, NixHash NarHash, StorePath Reference, StorePath Deriver, StorePath DeclaredOutput, string KeptFile);

        public async ValueTask InitializeAsync()
        {
            _store = await KilnStore.OpenAsync(new StoreOptions { DataDirectory = _temp["data"] }, default);
            _cache = new BinaryCache(_store, new BinaryCacheOptions { StagingDirectory = _temp["staging"] }, NullLogger.Instance);
            foreach (var (owner, account) in new[] { (Owner.Alice, "alice"), (Owner.Bob, "bob"), (Owner.Public, "pub") })
            {
                using var view = await _store.OpenViewAsync(account, default);
                foreach (var kind in Enum.GetValues<Kind>())
                {
                    Paths[(owner, kind)] = await AddAsync(view, $"{account}-{kind}", kind);
                }
            }

            var pub = (await _store.Accounts.FindAccountAsync("pub", default))!;
            await _store.Accounts.SetPublicCacheAsync(pub.Id, true, default);
            foreach (var (who, account) in new[] { (Who.Alice, "alice"), (Who.Bob, "bob") })
            {
                var id = (await _store.Accounts.FindAccountAsync(account, default))!.Id;
                var token = AccessToken.Generate();
                await _store.Accounts.AddTokenAsync(id, AccessToken.Hash(token), "", KeyPermissions.StoreRead, null, default);
                _tokens[who] = token;
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _store.DisposeAsync();
            _temp.Dispose();
        }

        // A path with a reference (for referrers), a deriver valid in the view (for derivers and logs), a build of that
        // deriver with a log, and a kept compressed copy of its NAR.
        private async Task<Entry> AddAsync(StoreView view, string name, Kind kind)
        {
            var contents = Encoding.UTF8.GetBytes($"{name} {Guid.NewGuid()}\n");
            var reference = await view.AddContentAddressedAsync($"{name}-ref", Ca("text:sha256"), new MemoryStream(Encoding.UTF8.GetBytes(name)), new SortedSet<StorePath>(), false, default);
            var declared = StorePath.Parse($"/nix/store/{new string('0', 32)}-{name}");
            var drvText = $"Derive([(\"out\",\"{declared}\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[],[])";
            var deriver = await view.AddContentAddressedAsync($"{name}.drv", Ca("text:sha256"), new MemoryStream(Encoding.UTF8.GetBytes(drvText)), new SortedSet<StorePath>(), false, default);
            var nar = NarOf(contents);
            ValidPathInfo info;
            if (kind == Kind.ContentAddressed)
            {
                info = await view.AddContentAddressedAsync(name, Ca("fixed:r:sha256"), new MemoryStream(nar), new SortedSet<StorePath> { reference.Path }, false, default);
            }
            else
            {
                var path = StorePath.FromHash(System.Security.Cryptography.SHA256.HashData(contents).AsSpan(0, 20), name);
                info = new ValidPathInfo
                {
                    Path = path,
                    NarHash = NixHash.Compute(NixHashAlgorithm.Sha256, nar),
                    NarSize = nar.Length,
                    References = new SortedSet<StorePath> { reference.Path },
                    Deriver = deriver.Path,
                };
                await view.AddToStoreAsync(info, new MemoryStream(nar), false, true, default);
            }

            // A build of the deriver for this account, with its log (built paths come from builds).
            var build = await _store.Builds.StartBuildAsync($"key-{name}", deriver.Path.BaseName, view.AccountId, 1, default);
            using (var log = _store.Logs.Create(build))
            {
                log.AppendLine($"building {name}");
            }

            await _store.Builds.FinishBuildAsync(build, new BuildEnd(true, "", "", 2, null, null, null, []), default);

            var kept = $"{NixHash.Compute(NixHashAlgorithm.Sha256, contents).ToNix32()}.nar.xz";
            Assert.True(await view.KeepNarFileAsync(kept, info.NarHash, "xz", new MemoryStream(contents), default));
            return new Entry(info.Path, info.NarHash, reference.Path, deriver.Path, declared, kept);
        }

        private static ContentAddressMethodAndAlgorithm Ca(string text) => ContentAddressMethodAndAlgorithm.ParseCamString(text);

        private static byte[] NarOf(byte[] contents)
        {
            var directory = Directory.CreateTempSubdirectory("kiln-visibility-");
            try
            {
                var file = Path.Combine(directory.FullName, "f");
                File.WriteAllBytes(file, contents);
                using var nar = new MemoryStream();
                NarDumper.Dump(file, nar);
                return nar.ToArray();
            }
            finally
            {
                directory.Delete(recursive: true);
            }
        }

        private async Task<StoreView> ViewAsync(Who who) => who switch
        {
            Who.Alice => await _store.OpenViewAsync("alice", default),
            Who.Bob => await _store.OpenViewAsync("bob", default),
            _ => throw new ArgumentOutOfRangeException(nameof(who)),
        };

        /// <summary>Whether the worker (and serve) protocol's read operation shows <paramref name="entry"/> to <paramref name="who"/>.</summary>
        public async Task<bool> WorkerAsync(Who who, string operation, Entry entry)
        {
            using var view = await ViewAsync(who);
            var path = entry.Path;
            switch (operation)
            {
                case "QueryValidPaths":
                    return (await view.QueryValidPathsAsync([path], default)).Contains(path);
                case "QueryPathInfos":
                    return (await view.QueryPathInfosAsync([path], default)).ContainsKey(path);
                case "QueryPathFromHashPart":
                    return await view.QueryPathFromHashPartAsync(path.HashPart, default) == path;
                case "QueryReferrers":
                    return (await view.QueryReferrersAsync(entry.Reference, default)).Contains(path);
                case "QueryValidDerivers":
                    return (await view.QueryValidDeriversAsync(entry.DeclaredOutput, default)).Contains(entry.Deriver);
                case "QueryAllValidPaths":
                    return (await view.QueryAllValidPathsAsync(default)).Contains(path);
                case "NarFromPath":
                    var blob = await view.OpenNarAsync(path, default);
                    if (blob is null)
                    {
                        return false;
                    }

                    await blob.DisposeAsync();
                    return true;
                case "QueryMissing":
                    var missing = await view.QueryMissingAsync([new DerivedPath.Opaque(path)], new NoLog(), default);
                    return !missing.Unknown.Contains(path);
                default:
                    throw new ArgumentOutOfRangeException(nameof(operation));
            }
        }

        /// <summary>Whether the HTTP cache answers <paramref name="who"/> with the thing (200) rather than 404.</summary>
        public async Task<bool> HttpAsync(Who who, string operation, Entry entry)
        {
            var url = operation switch
            {
                "narinfo" => $"/{entry.Path.HashPart}.narinfo",
                "nar" => $"/nar/{entry.NarHash.ToNix32()}.nar",
                "ls" => $"/{entry.Path.HashPart}.ls",
                "log" => $"/log/{entry.Deriver.BaseName}",
                "kept nar.xz" => $"/nar/{entry.KeptFile}",
                _ => throw new ArgumentOutOfRangeException(nameof(operation)),
            };
            var context = new DefaultHttpContext();
            context.Request.Method = "GET";
            context.Request.Path = url;
            if (_tokens.TryGetValue(who, out var token))
            {
                context.Request.Headers.Authorization = $"Bearer {token}";
            }

            context.Response.Body = new MemoryStream();
            await _cache.HandleAsync(context);
            Assert.True(context.Response.StatusCode is 200 or 404, $"{url}: {context.Response.StatusCode}");
            return context.Response.StatusCode == 200;
        }

        private sealed class NoLog : IClientLog
        {
            public void Log(string message)
            {
            }
        }
    }
}
