namespace Kiln.Store.Metadata;

/// <summary>
/// Kiln's metadata, one port per concern — paths and roots (<see cref="IPathMetadata"/>), accounts and their
/// credentials (<see cref="IAccountMetadata"/>), builds (<see cref="IBuildMetadata"/>), settings
/// (<see cref="ISettingsMetadata"/>), pushes to accounts' caches (<see cref="IPushMetadata"/>), the front doors' shared view of their queues (<see cref="IQueueBoard"/>), whole tables for moving an installation (<see cref="IMetadataTables"/>) — each with its own contract tests; a provider implements them all. SQLite is the
/// embedded default; PostgreSQL implements the same contracts when Kiln scales out. Which provider a data directory
/// uses is decided in one place, by URL (<see cref="MetadataStores.Open"/>). Every method that takes many paths
/// answers in one statement, not one per path.
/// </summary>
public interface IMetadataStore : IPathMetadata, IAccountMetadata, IBuildMetadata, ISettingsMetadata, IMetadataTables, IAgentMetadata, IPushMetadata, IQueueBoard, IAsyncDisposable
{
    /// <summary>Creates or upgrades the schema (numbered migrations, each applied once, safe against two processes at once).</summary>
    Task MigrateAsync(CancellationToken cancellationToken);
}
