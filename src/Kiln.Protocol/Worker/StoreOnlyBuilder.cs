using Kiln.Nix.Derivations;
using Kiln.Nix.StorePaths;

namespace Kiln.Protocol.Worker;

/// <summary>
/// The builder of a session with no scheduler behind it (protocol tests, a store-only server): what is already
/// valid is reported as such, since clients send BuildPaths to make sure of that (nix copy does); anything that
/// would need a build is refused clearly.
/// </summary>
internal sealed class StoreOnlyBuilder(IWorkerStore store) : IWorkerBuilder
{
    public const string NoBuilds = "Kiln cannot build yet: building arrives with the builds work; the store operations work";

    public async Task<IReadOnlyList<BuildResult>> BuildPathsAsync(IReadOnlyList<DerivedPath> targets, ClientBuildSettings settings, IBuildEvents events, CancellationToken cancellationToken)
    {
        var results = new List<BuildResult>();
        foreach (var target in targets)
        {
            results.Add(await AlreadyValidAsync(target, cancellationToken).ConfigureAwait(false) ?? throw new NixErrorException(NoBuilds));
        }

        return results;
    }

    public Task<BuildResult> BuildDerivationAsync(StorePath drvPath, Derivation derivation, ClientBuildSettings settings, IBuildEvents events, CancellationToken cancellationToken) =>
        throw new NixErrorException(NoBuilds);

    private async Task<BuildResult?> AlreadyValidAsync(DerivedPath target, CancellationToken ct)
    {
        switch (target)
        {
            case DerivedPath.Opaque opaque:
                var valid = await store.QueryValidPathsAsync([opaque.Path], ct).ConfigureAwait(false);
                return valid.Contains(opaque.Path)
                    ? new BuildResult { Status = BuildStatus.AlreadyValid }
                    : throw new NixErrorException($"path '{opaque.Path}' does not exist and cannot be created");
            case DerivedPath.Built built:
                var outputs = await store.QueryDerivationOutputMapAsync(built.DrvPath, ct).ConfigureAwait(false);
                var wanted = outputs.Where(o => built.Outputs is null || built.Outputs.Contains(o.Key)).ToList();
                if (built.Outputs is not null && built.Outputs.Any(o => !outputs.ContainsKey(o)))
                {
                    throw new NixErrorException($"derivation '{built.DrvPath}' does not have the wanted outputs");
                }

                if (wanted.Any(o => o.Value is null))
                {
                    return null;
                }

                var paths = wanted.Select(o => o.Value!.Value).ToList();
                var present = await store.QueryValidPathsAsync(paths, ct).ConfigureAwait(false);
                return paths.All(present.Contains)
                    ? new BuildResult { Status = BuildStatus.AlreadyValid, BuiltOutputs = wanted.ToDictionary(o => o.Key, o => o.Value!.Value) }
                    : null;
            default:
                return null;
        }
    }
}
