namespace Kiln.Protocol;

/// <summary>
/// Every log event id Kiln uses, in one place, so an operator can filter and alert on them and no two messages share
/// one: 1xxx sessions (protocols), 2xxx the daemon socket, 3xxx the SSH front door, 4xxx HTTP, 5xxx the scheduler and
/// agents, 6xxx the server's life (start, stop) and the store (61xx).
/// </summary>
public static class LogEvents
{
    public const int WorkerOpFailed = 1001;
    public const int WorkerSessionFailed = 1002;
    public const int ServeSessionFailed = 1101;

    public const int SocketListening = 2001;
    public const int SocketSession = 2002;
    public const int SocketSessionFailed = 2003;

    public const int NoSsh = 3001;
    public const int SshListening = 3002;
    public const int Sshd = 3003;
    public const int SshdExited = 3004;
    public const int BridgeRefusedPeer = 3005;
    public const int SshSession = 3006;
    public const int SshSessionFailed = 3007;
    public const int NoNativeBridge = 3008;

    public const int HttpListening = 4001;
    public const int HttpNotListening = 4002;
    public const int HttpUploaded = 4003;
    public const int HttpUnhandled = 4004;

    public const int BuildDone = 5001;
    public const int BuildFailedInKiln = 5002;
    public const int StepClaimFailed = 5003;
    public const int BuildsAbandonedElsewhere = 5004;
    public const int BuildLogNotShared = 5005;
    public const int StepClaimLost = 5006;
    public const int QueueBoardFailed = 5007;
    public const int BuildRecordNotWritten = 5008;
    public const int AgentStarted = 5010;
    public const int AgentFailed = 5011;
    public const int AgentStopped = 5012;
    public const int AgentUnavailable = 5013;
    public const int BuildersChanged = 5014;
    public const int AgentConnected = 5020;
    public const int AgentLost = 5021;
    public const int AgentRefused = 5022;
    public const int AgentMisbehaved = 5023;
    public const int AgentServerUnreachable = 5024;
    public const int AgentBuilding = 5025;
    public const int AgentBuilt = 5026;
    public const int AgentsListening = 5027;
    public const int PushNotQueued = 5030;
    public const int PushDone = 5031;
    public const int PushFailed = 5032;
    public const int PushWillRetry = 5033;
    public const int PushUnexpected = 5034;
    public const int PushQueueFailed = 5035;

    public const int NoBuildUsers = 6001;
    public const int BuildsAbandoned = 6002;
    public const int NetworkHelperAsRoot = 6003;
    public const int BuildsUnbounded = 6004;
    public const int LauncherMissing = 6005;

    public const int StoreOpened = 6101;
    public const int GarbageCollected = 6102;
    public const int SubstitutionWarning = 6103;
    public const int BlobMissing = 6104;
    public const int BlobSweepFailed = 6105;
    public const int StorageFailed = 6106;
    public const int InputsPruned = 6107;
    public const int GarbageCollectionFailed = 6108;
    public const int GarbageCollectionFreedNothing = 6109;
    public const int StorageSampleFailed = 6110;
    public const int SigningKeyUnreadable = 6111;
    public const int LocalCopiesPruned = 6112;
    public const int TempRootsUnpublished = 6113;
}
