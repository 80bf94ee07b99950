using Kiln.Protocol;
using Microsoft.Extensions.Logging;

namespace Kiln.Store;

/// <summary>What the store tells the operator: where it is, what the collector freed, upstream caches that failed, lost content.</summary>
internal static partial class StoreLog
{
    [LoggerMessage(EventId = LogEvents.StorageFailed, Level = LogLevel.Error, Message = "the log of build {BuildId} could not be written; it ends here")]
    public static partial void LogWriteFailed(ILogger logger, long buildId, Exception exception);

    [LoggerMessage(EventId = LogEvents.StoreOpened, Level = LogLevel.Information, Message = "store: {Directory}, metadata {Metadata}")]
    public static partial void Opened(ILogger logger, string directory, string metadata);

    [LoggerMessage(EventId = LogEvents.GarbageCollected, Level = LogLevel.Information,
        Message = "gc: account {Account}: {Paths} paths and {Bytes} NAR bytes removed from its view")]
    public static partial void Collected(ILogger logger, long account, int paths, long bytes);

    [LoggerMessage(EventId = LogEvents.SigningKeyUnreadable, Level = LogLevel.Warning, Message = "account {Account}: its signing key cannot be read, its builds are not signed with it: {Reason}")]
    public static partial void SigningKeyUnreadable(ILogger logger, string account, string reason);

    [LoggerMessage(EventId = LogEvents.SubstitutionWarning, Level = LogLevel.Warning, Message = "upstream: account {Account}: {Warning}")]
    public static partial void SubstitutionWarning(ILogger logger, string account, string warning);

    [LoggerMessage(EventId = LogEvents.BlobMissing, Level = LogLevel.Error,
        Message = "the contents of {Path} (blob {Blob}) are missing from the blob store; run 'kiln store verify'")]
    public static partial void BlobMissing(ILogger logger, string path, string blob);

    [LoggerMessage(EventId = LogEvents.TempRootsUnpublished, Level = LogLevel.Error,
        Message = "{Count} temporary roots of this front door's sessions could not be written to the database; other front doors' collections do not see them until they are")]
    public static partial void TempRootsUnpublished(ILogger logger, int count, Exception exception);
}
