using Kiln.Agent;
using Kiln.Nix.Hashing;
using Kiln.Nix.Tests.Support;

namespace Kiln.Scheduler.Tests;

/// <summary>An agent's store holding NARs in memory: what the input cache unpacks from in its tests.</summary>
internal sealed class MemoryAgentStore : IAgentStore
{
    public Dictionary<NixHash, byte[]> Nars { get; } = [];

    /// <summary>Adds the NAR of one file holding <paramref name="contents"/>.</summary>
    public (NixHash Hash, long Size) Add(string contents) => Add(NarBuilder.Start().File(contents).ToArray());

    /// <summary>Adds the NAR of a small tree (a script in bin/ and an id file) that names <paramref name="id"/>.</summary>
    public (NixHash Hash, long Size) AddTree(string id) => Add(NarBuilder.Start().OpenDirectory()
        .Entry("bin", n => n.OpenDirectory().Entry("tool", f => f.File($"#!/bin/sh\necho {id}\n", executable: true)).CloseDirectory())
        .Entry("id", f => f.File(id))
        .CloseDirectory().ToArray());

    private (NixHash Hash, long Size) Add(byte[] nar)
    {
        var hash = NixHash.Compute(NixHashAlgorithm.Sha256, nar);
        Nars[hash] = nar;
        return (hash, nar.Length);
    }

    public Task<Stream> OpenNarAsync(NixHash narHash, CancellationToken cancellationToken) => Task.FromResult<Stream>(new MemoryStream(Nars[narHash]));

    public ValueTask<bool> HasNarAsync(NixHash narHash, CancellationToken cancellationToken) => ValueTask.FromResult(Nars.ContainsKey(narHash));

    public IPendingNar CreateNar() => throw new NotSupportedException();
}
