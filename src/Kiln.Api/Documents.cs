using System.Globalization;
using System.Text.Json.Serialization;
using Kiln.Accounts;
using Kiln.Store.Accounts;
using Kiln.Store.Metadata;

namespace Kiln.Api;

// The JSON the API answers with (and the SSH shell's --json, which shows the same records). Times are ISO 8601 in UTC;
// other accounts are never named: a build another account started says so, not who.

/// <summary>
/// A push of a build's (<see cref="Build"/>'s) outputs to one of the account's caches: <c>queued</c> (waiting for its first try or a retry at
/// <see cref="NextAttempt"/>), <c>done</c> or <c>failed</c> (given up); the paths the last try uploaded (the rest were
/// there already) and the last error.
/// </summary>
public sealed record PushDocument(long Id, long Build, string Target, string State, int Attempts, long UploadedPaths, string Error, string Created, string? Finished, string? NextAttempt)
{
    public static PushDocument Of(PushRecord push)
    {
        ArgumentNullException.ThrowIfNull(push);
        return new PushDocument(push.Id, push.BuildId, push.Target, push.State.ToString().ToLowerInvariant(), push.Attempts, push.Uploaded, push.Error, BuildDocument.Time(push.Created),
            push.State == PushState.Queued ? null : BuildDocument.Time(push.Finished), push.State == PushState.Queued ? BuildDocument.Time(push.NextAttempt) : null);
    }

    /// <summary>One line for the shell: where, how it stands, and why if it did not go.</summary>
    public string ToLine() => State switch
    {
        "done" => $"push to {Target}: done, {UploadedPaths} paths uploaded{(Attempts > 1 ? $" (after {Attempts} tries)" : "")}",
        "failed" => $"push to {Target}: failed after {Attempts} tries: {Error}",
        _ => Attempts == 0 ? $"push to {Target}: queued" : $"push to {Target}: queued, try {Attempts + 1} at {NextAttempt} ({Error})",
    };
}

/// <summary>A build as the caller may see it.</summary>
/// <param name="Relation">started: the caller's account started it; shared: it was for the caller too (joined while it ran, or its outputs reused).</param>
public sealed record BuildDocument(long Id, string Derivation, string Status, string Failure, string Error, string Started, string? Stopped, long Seconds,
    double CpuUserSeconds, double CpuSystemSeconds, long? PeakMemory, string Agent, string Relation, IReadOnlyList<BuildOutputDocument> Outputs)
{
    public static BuildDocument Of(BuildRecord build, long? viewer)
    {
        ArgumentNullException.ThrowIfNull(build);
        return new BuildDocument(build.Id, "/nix/store/" + build.DrvPath, StatusOf(build), build.Failure, build.Error, Time(build.Started),
            build.Running ? null : Time(build.Stopped), build.Running ? 0 : build.RunSeconds,
            (build.CpuUserMicroseconds ?? 0) / 1e6, (build.CpuSystemMicroseconds ?? 0) / 1e6, build.PeakMemory, build.Agent,
            build.AccountId == viewer ? "started" : "shared", [.. build.Outputs.Select(o => new BuildOutputDocument(o.Name, o.Path.ToString()))])
        {
            Attempts = build.Attempts,
            RanFrom = build.RanFrom is { } ran ? Time(ran) : null,
        };
    }

    /// <summary>
    /// When it began to run on its agent (null while it waits, or if it never ran); <see cref="Started"/> is when it
    /// was asked for, and <see cref="Seconds"/> counts from this one when known.
    /// </summary>
    public string? RanFrom { get; init; }

    /// <summary>
    /// How many times agents took the build (recorded when it ends; 1 while it runs): more than one when an agent was
    /// lost while it ran, or its memory grant killed it and it ran again with more.
    /// </summary>
    public int Attempts { get; init; } = 1;

    /// <summary>The attempts after the first.</summary>
    public int Retries => Math.Max(0, Attempts - 1);

    /// <summary>The tags the caller's requests gave it (name=value), shown for one build; null in listings.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyList<string>? Tags { get; init; }

    /// <summary>The pushes of its outputs to the caller's push-to caches, shown for one build; null in listings.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyList<PushDocument>? Pushes { get; init; }

    /// <summary>running, built or failed (the values <c>?status=</c> takes).</summary>
    public static string StatusOf(BuildRecord build)
    {
        ArgumentNullException.ThrowIfNull(build);
        return build.Running ? "running" : build.Succeeded ? "built" : "failed";
    }

    /// <summary>Unix seconds as the API and the shell show times: ISO 8601 in UTC, to the second.</summary>
    public static string Time(long unix) => DateTimeOffset.FromUnixTimeSeconds(unix).ToString("yyyy-MM-ddTHH:mm:ssZ", CultureInfo.InvariantCulture);
}

public sealed record BuildOutputDocument(string Name, string Path);

/// <summary>
/// The caller's builds in the queue, on every front door (another front door's as it last published them, within a
/// second or so); <c>waiting</c> counts every build in line on them (all accounts').
/// </summary>
public sealed record QueueDocument(int Waiting, IReadOnlyList<QueueEntryDocument> Builds)
{
    /// <summary>
    /// This front door's listing with what the other front doors published (null: none can exist, or the board could not
    /// be read): their entries after this one's, each build once (the account may wait for one through both), and the
    /// builds in line on all of them.
    /// </summary>
    public static QueueDocument Of(QueueDocument here, Kiln.Store.Metadata.BoardView? elsewhere)
    {
        ArgumentNullException.ThrowIfNull(here);
        if (elsewhere is null)
        {
            return here;
        }

        var seen = here.Builds.Select(e => (e.Id, e.Derivation)).ToHashSet();
        var there = elsewhere.Entries.Select(e => QueueEntryDocument.Of(e.Entry)).Where(e => seen.Add((e.Id, e.Derivation)));
        return new QueueDocument(here.Waiting + elsewhere.Waiting, [.. here.Builds, .. there]);
    }
}

/// <param name="Id">The build's record; null while it waits for its account's limit (it has none yet).</param>
/// <param name="State">running, waiting (for a build slot), no-agent (no agent offers its system and features), preparing, or
/// account-limit (the account's max-jobs builds run on Kiln's front doors; it starts when one ends).</param>
/// <param name="Position">Its place in line (1: next) while waiting.</param>
public sealed record QueueEntryDocument(long? Id, string Derivation, string State, int? Position, string? Agent)
{
    /// <summary>An entry of a front door's listing, this one's or another's (<see cref="Kiln.Store.Metadata.BoardEntry"/>).</summary>
    public static QueueEntryDocument Of(Kiln.Store.Metadata.BoardEntry entry)
    {
        ArgumentNullException.ThrowIfNull(entry);
        return new(entry.BuildId, entry.DrvPath, entry.State, entry.Position, entry.Agent);
    }
}

/// <summary>What <c>POST /queue/cancel</c> did.</summary>
/// <param name="Requests">The account's requests for the derivation that ended on this front door (its sessions' builds fail), plus the
/// builds the other front doors holding its requests were asked to cancel (they do within a second or so).</param>
public sealed record QueueCancelDocument(string Derivation, int Requests);

/// <summary>
/// The farm (an operator's view, <c>server:read</c>): every account's jobs, the agents and how busy they are, on every
/// front door (another front door's as it last published it, a second or so ago).
/// </summary>
/// <param name="Waiting">Jobs waiting for a build slot, all accounts'.</param>
/// <param name="Running">Jobs an agent runs.</param>
/// <param name="FinishedLastHour">Jobs agents finished in the last hour (built or failed).</param>
public sealed record FarmDocument(int Waiting, int Running, int Slots, int BusySlots, int FinishedLastHour, int FinishedLastFiveMinutes,
    IReadOnlyList<FarmAgentDocument> Agents)
{
    /// <summary>The form another front door reads from the queue board (<see cref="Of"/>).</summary>
    public string ToBoard() => System.Text.Json.JsonSerializer.Serialize(this, System.Text.Json.JsonSerializerOptions.Web);

    /// <summary>
    /// This front door's farm with those the others published (<see cref="ToBoard"/>), by front door: the figures added
    /// up, their agents after this one's, each named with its front door. One that cannot be read is left out.
    /// </summary>
    public static FarmDocument Of(FarmDocument here, IEnumerable<(string FrontDoor, string Farm)> elsewhere)
    {
        ArgumentNullException.ThrowIfNull(here);
        ArgumentNullException.ThrowIfNull(elsewhere);
        var farm = here;
        foreach (var (frontDoor, text) in elsewhere)
        {
            try
            {
                var there = System.Text.Json.JsonSerializer.Deserialize<FarmDocument>(text, System.Text.Json.JsonSerializerOptions.Web);
                if (there?.Agents is null)
                {
                    continue;
                }

                farm = checked(new FarmDocument(farm.Waiting + there.Waiting, farm.Running + there.Running, farm.Slots + there.Slots,
                    farm.BusySlots + there.BusySlots, farm.FinishedLastHour + there.FinishedLastHour, farm.FinishedLastFiveMinutes + there.FinishedLastFiveMinutes,
                    [.. farm.Agents, .. there.Agents.OfType<FarmAgentDocument>().Select(a => a with { Name = a.Name ?? "", Kind = a.Kind ?? "agent", Systems = a.Systems ?? [], FrontDoor = frontDoor })]));
            }
            catch (Exception e) when (e is System.Text.Json.JsonException or OverflowException)
            {
                // (a front door of another version, say: its farm is left out)
            }
        }

        return farm;
    }
}

/// <param name="Kind">agent (a Kiln agent, the embedded one included) or stock-builder (a stock Nix machine).</param>
/// <param name="FrontDoor">The front door it is connected to, when not the one answering (each has its own embedded agent).</param>
public sealed record FarmAgentDocument(string Name, string Kind, IReadOnlyList<string> Systems, int Slots, int Busy, string? FrontDoor = null);

/// <summary>A page of builds, newest first; <c>next</c> is the cursor of the following page (null on the last).</summary>
public sealed record BuildPage(IReadOnlyList<BuildDocument> Builds, string? Next);

/// <summary>The caller: its account, the token it used, and what that token may do.</summary>
public sealed record MeDocument(string Account, TokenDocument Token, IReadOnlyList<string> Permissions);

/// <summary>A token (never its secret).</summary>
public sealed record TokenDocument(long Id, string Description, IReadOnlyList<string> Permissions, string Created, string? Expires, bool Revoked)
{
    public static TokenDocument Of(TokenRecord token)
    {
        ArgumentNullException.ThrowIfNull(token);
        return new TokenDocument(token.Id, token.Description, KeyPermissionNames.ToNames(token.Permissions), BuildDocument.Time(token.Created),
            token.Expires is { } expires ? BuildDocument.Time(expires) : null, token.Revoked is not null);
    }
}

/// <summary>A token just made: its secret, shown this once, and its record.</summary>
public sealed record NewTokenDocument(string Token, TokenDocument Details);

/// <summary>What a new token is to carry.</summary>
/// <param name="Permissions">Names: store:read, store:write, build:read, build:write, account:write; at most the caller's own.</param>
/// <param name="Expires">A duration (90d, 12h), a date (2027-01-31) or never (the default).</param>
public sealed record TokenRequest(IReadOnlyList<string>? Permissions, string? Expires, string? Description);

/// <summary>A key to let log in: its OpenSSH public-key line, the permissions it gets, and the proof that the caller holds it.</summary>
/// <param name="Proof">An <c>ssh-keygen -Y sign</c> signature of the message a first request without one answers with.</param>
public sealed record KeyRequest(string? Key, IReadOnlyList<string>? Permissions, string? Proof);

/// <summary>A new signing key's name (default: HOST-ACCOUNT-1).</summary>
public sealed record SigningKeyRequest(string? Name);

/// <summary>An SSH login key of the account.</summary>
public sealed record KeyDocument(string Fingerprint, string Type, string Comment, IReadOnlyList<string> Permissions)
{
    public static KeyDocument Of(SshKeyRecord key)
    {
        ArgumentNullException.ThrowIfNull(key);
        return new KeyDocument(key.Fingerprint, key.Key.Type, key.Key.Comment, KeyPermissionNames.ToNames(key.Permissions));
    }
}

/// <summary>The account's settings (a netrc's content is never shown, only whether there is one).</summary>
public sealed record SettingsDocument(string Account, bool PublicCache, string Substituters, string TrustedPublicKeys, bool HasCredentials)
{
    public static SettingsDocument Of(AccountSettings settings)
    {
        ArgumentNullException.ThrowIfNull(settings);
        return new SettingsDocument(settings.Account, settings.PublicCache, settings.Substituters, settings.TrustedPublicKeys, settings.HasCredentials);
    }
}

/// <summary>The public half of the account's signing key.</summary>
public sealed record SigningKeyDocument(string PublicKey);

/// <summary>A pin: its name and the path it keeps.</summary>
public sealed record PinDocument(string Name, string Path)
{
    public static PinDocument Of(PinRecord pin)
    {
        ArgumentNullException.ThrowIfNull(pin);
        return new PinDocument(pin.Name, pin.Path.ToString());
    }
}

/// <summary>What to pin: a store path, and a name for the pin (default: the path's name).</summary>
public sealed record PinRequest(string? Path, string? Name);

/// <summary>A store path in the caller's view.</summary>
/// <param name="Provenance">uploaded, built, substituted or shared: how it came into the account's view.</param>
public sealed record PathDocument(string Path, string NarHash, long NarSize, IReadOnlyList<string> References, string? Deriver, string Registered,
    IReadOnlyList<string> Signatures, string? ContentAddress, string Provenance)
{
    public static PathDocument Of(PathRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        var info = record.Info;
        return new PathDocument(info.Path.ToString(), info.NarHash.ToString(), info.NarSize, [.. info.References.Select(r => r.ToString())],
            info.Deriver?.ToString(), BuildDocument.Time(info.RegistrationTime), [.. info.Signatures], info.ContentAddress?.ToString(),
            record.Provenance.ToString().ToLowerInvariant());
    }
}
