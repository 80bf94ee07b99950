using Kiln.Agent;
using Kiln.Nix.Hashing;
using Kiln.Store.Blobs;

namespace Kiln.Scheduler;

/// <summary>
/// The embedded agent's view of the blob store: it reads input NARs and writes output NARs through the blob port
/// directly, in the server's process. (A remote agent reaches the same blobs over HTTP.)
/// </summary>
public sealed class LocalAgentStore(IBlobStore blobs) : IAgentStore
{
    public async Task<Stream> OpenNarAsync(NixHash narHash, CancellationToken cancellationToken)
    {
        var source = await blobs.OpenReadAsync(narHash, cancellationToken).ConfigureAwait(false)
            ?? throw new IOException($"the input NAR {narHash.ToNix32()} is missing from the store");
        return await source.OpenStreamAsync(cancellationToken).ConfigureAwait(false);
    }

    public ValueTask<bool> HasNarAsync(NixHash narHash, CancellationToken cancellationToken) => blobs.HasAsync(narHash, cancellationToken);

    public IPendingNar CreateNar() => new PendingNar(blobs.CreateWriter());

    // The agent's output processing is synchronous (it walks trees); the blob writer's completion is awaited here.
    private sealed class PendingNar(IBlobWriter writer) : IPendingNar
    {
        public void Write(ReadOnlySpan<byte> data) => writer.Write(data);

        public (NixHash NarHash, long NarSize) Complete()
        {
            var length = writer.Length;
            return (writer.CompleteAsync(CancellationToken.None).AsTask().GetAwaiter().GetResult(), length);
        }

        public void Commit() => writer.CommitAsync(CancellationToken.None).AsTask().GetAwaiter().GetResult();

        public void Dispose() => writer.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }
}
