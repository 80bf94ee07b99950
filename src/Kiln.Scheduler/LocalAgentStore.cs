using Kiln.Agent;
using Kiln.Nix.Hashing;
using Kiln.Store.Blobs;

namespace Kiln.Scheduler;

/// <summary>The embedded agent's view of the blob store: it reads input NARs and writes output NARs in place.</summary>
public sealed class LocalAgentStore(BlobStore blobs) : IAgentStore
{
    public Stream OpenNar(NixHash narHash) => File.OpenRead(blobs.PathOf(narHash));

    public IPendingNar CreateNar()
    {
        var stream = blobs.CreateTemp(out var path);
        return new PendingNar(blobs, stream, path);
    }

    private sealed class PendingNar(BlobStore blobs, FileStream stream, string path) : IPendingNar
    {
        private bool _committed;

        public Stream Stream => stream;

        public void Commit(NixHash narHash)
        {
            blobs.Seal(stream);
            blobs.Commit(path, narHash);
            _committed = true;
        }

        public void Dispose()
        {
            stream.Dispose();
            if (!_committed)
            {
                BlobStore.DeleteTemp(path);
            }
        }
    }
}
