using System.Collections.Concurrent;
using System.Net.Http.Headers;
using Kiln.Agent;
using Kiln.Nix.Hashing;

namespace Kiln.Farm;

/// <summary>
/// The store as a remote agent reaches it: input NARs fetched from the server under a lease that names them (the
/// server refuses any other), output NARs spooled to local disk while hashed, then put under the lease whose build
/// wrote them.
/// </summary>
internal sealed class RemoteAgentStore(RemoteAgent agent, string spoolDirectory) : IAgentStore
{
    // The leases naming each input (a NAR shared by two running builds may be fetched under either).
    private readonly ConcurrentDictionary<NixHash, ConcurrentDictionary<string, byte>> _leasesByInput = new();

    // The lease of the build this flow of execution runs (outputs are put under it).
    private readonly AsyncLocal<string?> _current = new();

    /// <summary>Makes the job's inputs fetchable and its outputs put under <paramref name="lease"/> until disposed.</summary>
    public IDisposable Lease(string lease, BuildJob job)
    {
        _current.Value = lease;
        var inputs = job.Inputs.Select(i => i.NarHash).Distinct().ToList();
        foreach (var input in inputs)
        {
            _leasesByInput.GetOrAdd(input, _ => new ConcurrentDictionary<string, byte>(StringComparer.Ordinal))[lease] = 0;
        }

        return new Release(() =>
        {
            foreach (var input in inputs)
            {
                if (_leasesByInput.TryGetValue(input, out var leases) && leases.TryRemove(lease, out _) && leases.IsEmpty)
                {
                    // (another lease may name it again meanwhile: only an empty set is removed)
                    _leasesByInput.TryRemove(new KeyValuePair<NixHash, ConcurrentDictionary<string, byte>>(input, leases));
                }
            }
        });
    }

    public async Task<Stream> OpenNarAsync(NixHash narHash, CancellationToken cancellationToken)
    {
        var leases = _leasesByInput.TryGetValue(narHash, out var named) ? named.Keys.ToList() : [];
        if (_current.Value is { } current && leases.Remove(current))
        {
            leases.Insert(0, current);
        }

        foreach (var lease in leases)
        {
            var response = await agent.SendAsync(HttpMethod.Get, $"leases/{lease}/nars/{narHash.ToNix32()}", null, TimeSpan.FromMinutes(10), cancellationToken)
                .ConfigureAwait(false);
            if (response.StatusCode == System.Net.HttpStatusCode.Gone)
            {
                response.Dispose();
                continue; // that lease ended meanwhile; another may name the NAR too
            }

            try
            {
                await RemoteAgent.EnsureSuccessAsync(response, cancellationToken).ConfigureAwait(false);
                return new ResponseStream(response, await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false));
            }
            catch
            {
                response.Dispose();
                throw;
            }
        }

        throw new IOException($"no running lease names the input NAR {narHash.ToNix32()}");
    }

    // Inputs are dropped from the agent's cache by its size bound, not because the server's store let them go.
    public ValueTask<bool> HasNarAsync(NixHash narHash, CancellationToken cancellationToken) => ValueTask.FromResult(true);

    public IPendingNar CreateNar() => new SpooledNar(agent, _current.Value ?? throw new InvalidOperationException("an output NAR outside of any lease"), spoolDirectory);

    private sealed class Release(Action release) : IDisposable
    {
        public void Dispose() => release();
    }

    /// <summary>An output NAR on local disk until it is put (the output processor writes synchronously, as it walks the tree).</summary>
    private sealed class SpooledNar : IPendingNar
    {
        private readonly RemoteAgent _agent;
        private readonly string _lease;
        private readonly FileStream _file;
        private readonly HashingSink _hash = new(NixHashAlgorithm.Sha256);
        private NixHash _narHash;

        public SpooledNar(RemoteAgent agent, string lease, string directory)
        {
            _agent = agent;
            _lease = lease;
            Directory.CreateDirectory(directory);
            _file = new FileStream(Path.Combine(directory, Guid.NewGuid().ToString("N") + ".nar"), FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None,
                1 << 16, FileOptions.DeleteOnClose);
        }

        public void Write(ReadOnlySpan<byte> data)
        {
            _file.Write(data);
            _hash.Append(data);
        }

        public (NixHash NarHash, long NarSize) Complete()
        {
            _narHash = _hash.Finish();
            _file.Flush();
            return (_narHash, _file.Length);
        }

        public void Commit() => PutAsync().GetAwaiter().GetResult();

        private async Task PutAsync()
        {
            for (var attempt = 0; ; attempt++)
            {
                _file.Position = 0;
                var body = new StreamContent(new NonClosing(_file), 1 << 16);
                body.Headers.ContentType = new MediaTypeHeaderValue("application/x-nix-nar");
                body.Headers.ContentLength = _file.Length;
                try
                {
                    using var response = await _agent.SendAsync(HttpMethod.Put, $"leases/{_lease}/outputs/{_narHash.ToNix32()}", body, TimeSpan.FromHours(1), CancellationToken.None)
                        .ConfigureAwait(false);
                    await RemoteAgent.EnsureSuccessAsync(response, CancellationToken.None).ConfigureAwait(false);
                    return;
                }
                catch (Exception e) when (RemoteAgent.IsTransient(e, CancellationToken.None) && attempt < 5)
                {
                    await Task.Delay(TimeSpan.FromSeconds(1 << attempt)).ConfigureAwait(false);
                }
            }
        }

        public void Dispose()
        {
            _file.Dispose();
            _hash.Dispose();
        }
    }

    // The spool file outlives each attempt to put it.
    private sealed class NonClosing(Stream inner) : Kiln.Nix.ReadOnlyStream
    {
        public override long Length => inner.Length;

        public override long Position { get => inner.Position; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);
    }

    // A response body that takes the response with it when disposed.
    private sealed class ResponseStream(HttpResponseMessage response, Stream body) : Kiln.Nix.ReadOnlyStream
    {
        public override int Read(byte[] buffer, int offset, int count) => body.Read(buffer, offset, count);

        public override int Read(Span<byte> buffer) => body.Read(buffer);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => body.ReadAsync(buffer, cancellationToken);

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => body.ReadAsync(buffer, offset, count, cancellationToken);

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                body.Dispose();
                response.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
