namespace Kiln.Protocol.Worker;

/// <summary>Worker protocol operation codes (Nix's <c>WorkerProto::Op</c>).</summary>
public enum WorkerOp : ulong
{
    IsValidPath = 1,
    HasSubstitutes = 3,
    QueryPathHash = 4,
    QueryReferences = 5,
    QueryReferrers = 6,
    AddToStore = 7,
    AddTextToStore = 8,
    BuildPaths = 9,
    EnsurePath = 10,
    AddTempRoot = 11,
    AddIndirectRoot = 12,
    SyncWithGC = 13,
    FindRoots = 14,
    ExportPath = 16,
    QueryDeriver = 18,
    SetOptions = 19,
    CollectGarbage = 20,
    QuerySubstitutablePathInfo = 21,
    QueryDerivationOutputs = 22,
    QueryAllValidPaths = 23,
    QueryFailedPaths = 24,
    ClearFailedPaths = 25,
    QueryPathInfo = 26,
    ImportPaths = 27,
    QueryDerivationOutputNames = 28,
    QueryPathFromHashPart = 29,
    QuerySubstitutablePathInfos = 30,
    QueryValidPaths = 31,
    QuerySubstitutablePaths = 32,
    QueryValidDerivers = 33,
    OptimiseStore = 34,
    VerifyStore = 35,
    BuildDerivation = 36,
    AddSignatures = 37,
    NarFromPath = 38,
    AddToStoreNar = 39,
    QueryMissing = 40,
    QueryDerivationOutputMap = 41,
    RegisterDrvOutput = 42,
    QueryRealisation = 43,
    AddMultipleToStore = 44,
    AddBuildLog = 45,
    BuildPathsWithResults = 46,
    AddPermRoot = 47,
}

/// <summary>Tags of the messages a daemon sends while it works on an operation.</summary>
internal static class StderrTag
{
    public const ulong Next = 0x6f6c6d67;
    public const ulong Read = 0x64617461;
    public const ulong Write = 0x64617416;
    public const ulong Last = 0x616c7473;
    public const ulong Error = 0x63787470;
    public const ulong StartActivity = 0x53545254;
    public const ulong StopActivity = 0x53544f50;
    public const ulong Result = 0x52534c54;
}
