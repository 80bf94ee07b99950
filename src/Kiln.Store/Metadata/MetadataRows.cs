using System.Data.Common;
using System.Reflection;
using System.Text;
using System.Text.Json;
using Kiln.Nix.Hashing;
using Kiln.Nix.Store;
using Kiln.Nix.StorePaths;
using Kiln.Store.Accounts;

namespace Kiln.Store.Metadata;

/// <summary>
/// What the SQL providers share: how records are stored as text (trust levels, root kinds, build outputs) and read
/// back from a row. Both providers select the same columns in the same order (their SQL differs: SQLite's
/// <c>group_concat</c> is PostgreSQL's <c>string_agg</c>), so one reader maps a row for either.
/// </summary>
internal static class MetadataRows
{
    /// <summary>
    /// The columns <see cref="ReadPath"/> reads, from <c>paths p</c>, in the provider's words for concatenating texts
    /// (<c>group_concat</c> / <c>string_agg</c>) and for a newline (<c>char(10)</c> / <c>chr(10)</c>).
    /// </summary>
    /// <remarks>
    /// Each reference's name is a lookup by primary key of its own, not a join: PostgreSQL's generic plan for the join
    /// (the one a prepared statement settles on) could hash the whole paths table for every record read, which measured
    /// 120 µs against 33 µs for one narinfo lookup on a 330-path store, and grows with the store.
    /// </remarks>
    public static string PathColumns(string aggregate, string newline) => $"""
        p.path, p.nar_hash, p.nar_size, p.deriver, p.ca, p.registration_time, p.ultimate, p.self_reference,
        p.provenance, p.trust,
        (SELECT {aggregate}((SELECT q.path FROM paths q WHERE q.id = r.reference), ' ') FROM refs r WHERE r.referrer = p.id),
        (SELECT {aggregate}(s.sig, {newline}) FROM sigs s WHERE s.path_id = p.id)
        """;

    /// <summary>
    /// What <see cref="ReadGraphNode"/> reads, from <c>paths p</c> of one account, in the provider's word for
    /// concatenating texts (each reference looked up by key, as in <see cref="PathColumns"/>).
    /// </summary>
    public static string GraphColumns(string aggregate) => $"""
        p.path, p.deriver, p.nar_size, p.nar_hash,
        (SELECT {aggregate}((SELECT q.path FROM paths q WHERE q.id = r.reference), ' ') FROM refs r WHERE r.referrer = p.id),
        p.registration_time, p.last_used
        """;

    public static GraphNode ReadGraphNode(DbDataReader reader) => new(
        StorePath.FromBaseName(reader.GetString(0)),
        reader.IsDBNull(4) ? [] : reader.GetString(4).Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(StorePath.FromBaseName).ToList(),
        reader.IsDBNull(1) ? null : StorePath.FromBaseName(reader.GetString(1)),
        reader.GetInt64(2),
        new NixHash(NixHashAlgorithm.Sha256, (byte[])reader.GetValue(3)),
        reader.GetInt64(5))
    {
        LastUsed = reader.GetInt64(6),
    };

    /// <summary>Marks an account's (<c>@a</c>) path (<c>@p</c>, base name) used at <c>@t</c>, unless it was used later already.</summary>
    public const string TouchPath = "UPDATE paths SET last_used = @t WHERE account_id = @a AND path = @p AND last_used < @t - 3600";

    public static PathRecord ReadPath(DbDataReader reader)
    {
        var path = StorePath.FromBaseName(reader.GetString(0));
        var references = new SortedSet<StorePath>();
        if (!reader.IsDBNull(10))
        {
            foreach (var reference in reader.GetString(10).Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                references.Add(StorePath.FromBaseName(reference));
            }
        }

        if (reader.GetBoolean(7))
        {
            references.Add(path);
        }

        var signatures = new SortedSet<string>(StringComparer.Ordinal);
        if (!reader.IsDBNull(11))
        {
            foreach (var signature in reader.GetString(11).Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                signatures.Add(signature);
            }
        }

        var info = new ValidPathInfo
        {
            Path = path,
            NarHash = new NixHash(NixHashAlgorithm.Sha256, (byte[])reader.GetValue(1)),
            NarSize = reader.GetInt64(2),
            Deriver = reader.IsDBNull(3) ? null : StorePath.FromBaseName(reader.GetString(3)),
            ContentAddress = reader.IsDBNull(4) ? null : ContentAddress.Parse(reader.GetString(4)),
            RegistrationTime = reader.GetInt64(5),
            Ultimate = reader.GetBoolean(6),
            References = references,
            Signatures = signatures,
        };
        return new PathRecord(info, Enum.Parse<Provenance>(reader.GetString(8), ignoreCase: true), ParseTrust(reader.GetString(9)));
    }

    public static string ProvenanceText(Provenance provenance) => provenance.ToString().ToLowerInvariant();

    public static string TrustText(PathTrust trust) => trust switch
    {
        PathTrust.Untrusted => "untrusted",
        PathTrust.ContentAddressed => "content-addressed",
        PathTrust.SignedByTrustedKey => "signed",
        PathTrust.Built => "built",
        PathTrust.SignedByAccountKey => "signed-by-account",
        PathTrust.BuiltByAccountTrust => "built-by-account",
        PathTrust.TrustedAccount => "trusted-account",
        _ => throw new ArgumentOutOfRangeException(nameof(trust)),
    };

    public static PathTrust ParseTrust(string text) => text switch
    {
        "content-addressed" => PathTrust.ContentAddressed,
        "signed" => PathTrust.SignedByTrustedKey,
        "built" => PathTrust.Built,
        "signed-by-account" => PathTrust.SignedByAccountKey,
        "built-by-account" => PathTrust.BuiltByAccountTrust,
        "trusted-account" => PathTrust.TrustedAccount,
        _ => PathTrust.Untrusted,
    };

    /// <summary>The stored texts of the globally trusted levels (<see cref="PathTrustLevels.IsGlobal"/>), for ordering in SQL.</summary>
    public static readonly string GlobalTrustTexts =
        string.Join(", ", Enum.GetValues<PathTrust>().Where(t => t.IsGlobal()).Select(t => $"'{TrustText(t)}'"));

    public static string KindText(RootKind kind) => kind switch { RootKind.Permanent => "perm", RootKind.Pin => "pin", _ => "indirect" };

    // A kind this version does not know (a newer Kiln's) keeps its path, as a permanent root would: never read as an
    // indirect root, whose link would not be found and whose path would be collected.
    public static RootKind ParseKind(string text) => text switch { "indirect" => RootKind.Indirect, "pin" => RootKind.Pin, _ => RootKind.Permanent };

    public const string KeyColumns = "k.id, k.account_id, a.name, k.key_type, k.key_blob, k.comment, k.permissions, k.enabled, k.created";

    public static SshKeyRecord ReadKey(DbDataReader reader) => new(
        reader.GetInt64(0),
        reader.GetInt64(1),
        reader.GetString(2),
        new SshPublicKey(reader.GetString(3), reader.GetString(4), reader.GetString(5)),
        KeyPermissionNames.Parse(reader.GetString(6)),
        reader.GetBoolean(7),
        reader.GetInt64(8));

    public const string TokenColumns = "t.id, t.account_id, a.name, t.description, t.permissions, t.expires, t.revoked, t.created";

    public static TokenRecord ReadToken(DbDataReader reader) => new(
        reader.GetInt64(0),
        reader.GetInt64(1),
        reader.GetString(2),
        reader.GetString(3),
        KeyPermissionNames.Parse(reader.GetString(4)),
        reader.IsDBNull(5) ? null : reader.GetInt64(5),
        reader.IsDBNull(6) ? null : reader.GetInt64(6),
        reader.GetInt64(7));

    /// <summary>
    /// Claims a step (<c>@k</c>) for an owner (<c>@o</c>) until <c>@e</c>: inserted, renewed by its owner, or taken over
    /// once expired before <c>@now</c>; a row comes back (with RETURNING) exactly when the claim is the owner's. A claim
    /// (re)made holds no account slot: the scheduler claims before it takes one, and a slot left on a lapsed claim of the
    /// same owner (its front door cut off meanwhile) must not come back uncounted.
    /// </summary>
    public const string ClaimStep = """
        INSERT INTO step_claims (step_key, owner, expires) VALUES (@k, @o, @e)
        ON CONFLICT (step_key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires, slot_account = NULL
        WHERE step_claims.owner = excluded.owner OR step_claims.expires < @now
        """;

    /// <summary>
    /// Makes the owner's claim on a step (<c>@k</c>, <c>@o</c>) one of account <c>@a</c>'s running builds, if fewer than
    /// <c>@max</c> live claims (<c>@now</c>) are; returns a row when it is one (already, or now).
    /// </summary>
    public const string ClaimAccountSlot = """
        UPDATE step_claims SET slot_account = @a
        WHERE step_key = @k AND owner = @o
          AND (slot_account = @a
               OR (SELECT count(*) FROM step_claims s WHERE s.slot_account = @a AND s.expires >= @now) < @max)
        RETURNING step_key
        """;

    /// <summary>Account <c>@a</c>'s entries on the queue board of front doors other than <c>@me</c>, live at <c>@now</c> (<see cref="ReadBoardEntry"/>).</summary>
    public const string BoardEntries = """
        SELECT e.owner, e.account, e.build_id, e.drv_path, e.state, e.position, e.agent
        FROM queue_entries e JOIN queue_boards b ON b.owner = e.owner
        WHERE e.account = @a AND e.owner <> @me AND b.expires >= @now
        ORDER BY e.owner, e.position, e.build_id
        """;

    /// <summary>How many builds wait in the lines of front doors other than <c>@me</c> whose publications are live at <c>@now</c>.</summary>
    public const string BoardWaiting = "SELECT COALESCE(sum(waiting), 0) FROM queue_boards WHERE owner <> @me AND expires >= @now";

    /// <summary>Renews front door <c>@o</c>'s publication (<c>@w</c> waiting, its farm <c>@f</c> unless null, until <c>@e</c>).</summary>
    public const string PublishBoard = """
        INSERT INTO queue_boards (owner, waiting, farm, expires) VALUES (@o, @w, @f, @e)
        ON CONFLICT (owner) DO UPDATE SET waiting = excluded.waiting, farm = COALESCE(excluded.farm, queue_boards.farm), expires = excluded.expires
        """;

    /// <summary>The farms front doors other than <c>@me</c> published, live at <c>@now</c>: owner and farm.</summary>
    public const string BoardFarms = "SELECT owner, farm FROM queue_boards WHERE owner <> @me AND expires >= @now AND farm IS NOT NULL ORDER BY owner";

    /// <summary>Asks front door <c>@o</c> to cancel account <c>@a</c>'s requests for build <c>@b</c> or derivation <c>@d</c>.</summary>
    public const string AskCancel = "INSERT INTO queue_cancels (owner, account, build_id, drv_path, asked) VALUES (@o, @a, @b, @d, @t)";

    /// <summary>Takes the cancels asked of front door <c>@o</c> (<see cref="ReadBoardCancel"/>).</summary>
    public const string TakeCancels = "DELETE FROM queue_cancels WHERE owner = @o RETURNING account, build_id, drv_path";

    /// <summary>Forgets the publications expired before <c>@t</c> with their entries, and the cancels asked before it, in that order.</summary>
    public static readonly string[] ForgetLapsed =
    [
        "DELETE FROM queue_entries WHERE owner IN (SELECT owner FROM queue_boards WHERE expires < @t)",
        "DELETE FROM queue_boards WHERE expires < @t",
        "DELETE FROM queue_cancels WHERE asked < @t",
    ];

    public static PublishedEntry ReadBoardEntry(DbDataReader reader) =>
        new(reader.GetString(0), new BoardEntry(reader.GetInt64(1), reader.IsDBNull(2) ? null : reader.GetInt64(2), reader.GetString(3), reader.GetString(4),
            reader.IsDBNull(5) ? null : reader.GetInt32(5), reader.IsDBNull(6) ? null : reader.GetString(6)));

    public static BoardCancel ReadBoardCancel(DbDataReader reader) =>
        new(reader.GetInt64(0), reader.IsDBNull(1) ? null : reader.GetInt64(1), reader.IsDBNull(2) ? null : reader.GetString(2));

    /// <summary>How many of account <c>@a</c>'s claims hold one of its slots and are live at <c>@now</c>.</summary>
    public const string CountAccountSlots = "SELECT count(*) FROM step_claims WHERE slot_account = @a AND expires >= @now";

    /// <summary>Stores a service secret (<c>@n</c>, <c>@s</c>, <c>@t</c>) unless one by that name is stored already.</summary>
    public const string AddServerSecret = "INSERT INTO server_secrets (name, secret, created) VALUES (@n, @s, @t) ON CONFLICT (name) DO NOTHING";

    /// <summary>What the latest successful builds of a package (<c>@p</c>) used, newest first, at most <c>@n</c>.</summary>
    public const string RecentUsage = """
        SELECT peak_memory, COALESCE(cpu_user_us, 0) + COALESCE(cpu_system_us, 0), stopped - started FROM builds
        WHERE pname = @p AND status = 'built' AND peak_memory IS NOT NULL ORDER BY id DESC LIMIT @n
        """;

    /// <summary>
    /// The latest finished build of step <c>@k</c> that account <c>@a</c> started (its own limits made it what it was:
    /// a build it joined ran under another's), if it failed with one of the kinds
    /// in the statement's list (parameters <c>@f0</c>, <c>@f1</c>, …; <paramref name="kinds"/> of them).
    /// </summary>
    public static string FailedBuild(int kinds) => $"SELECT {BuildColumns} FROM builds b WHERE b.id = (SELECT MAX(l.id) FROM builds l " +
        "WHERE l.step_key = @k AND l.account_id = @a AND l.status <> 'running') " +
        $"AND b.status = 'failed' AND b.failure IN ({string.Join(", ", Enumerable.Range(0, Math.Max(1, kinds)).Select(i => "@f" + i))})";

    /// <summary>The CPU microseconds of the builds account <c>@a</c> started at or after <c>@s</c>.</summary>
    public const string CpuSince = """
        SELECT CAST(COALESCE(SUM(COALESCE(cpu_user_us, 0) + COALESCE(cpu_system_us, 0)), 0) AS BIGINT) FROM builds WHERE account_id = @a AND started >= @s
        """;

    public static BuildUsage ReadUsage(DbDataReader reader) => new(reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2));

    /// <summary>
    /// The listing <paramref name="query"/> asks for, of one account's builds (<c>@a</c>) or of all: the statement and
    /// its parameters (named without a prefix).
    /// </summary>
    public static (string Sql, (string Name, object? Value)[] Parameters) ListBuilds(long? account, BuildQuery query)
    {
        ArgumentNullException.ThrowIfNull(query);
        var where = new List<string>();
        var parameters = new List<(string, object?)> { ("l", (long)query.Limit) };
        void Filter(string condition, string name, object value)
        {
            where.Add(condition);
            parameters.Add((name, value));
        }

        if (account is { } id)
        {
            Filter("f.account_id = @a", "a", id);
        }

        if (query.Before is { } before)
        {
            Filter("b.id < @before", "before", before);
        }

        if (query.State is { } state)
        {
            Filter("b.status = @status", "status", state switch { BuildState.Running => "running", BuildState.Built => "built", _ => "failed" });
        }

        if (query.Tag is { } tag)
        {
            where.Add($"EXISTS (SELECT 1 FROM build_tags t WHERE t.build_id = b.id{(account is null ? "" : " AND t.account_id = @a")} AND t.name = @tag_name AND t.value = @tag_value)");
            parameters.Add(("tag_name", tag.Name));
            parameters.Add(("tag_value", tag.Value));
        }

        if (query.Since is { } since)
        {
            Filter("b.started >= @since", "since", since);
        }

        if (query.Until is { } until)
        {
            Filter("b.started < @until", "until", until);
        }

        if (query.NameContains is { Length: > 0 } name)
        {
            // The name part only (after the 32-character hash and its dash), without case; LIKE's wildcards in the text are
            // taken literally.
            // ('!' escapes: a backslash literal depends on PostgreSQL's standard_conforming_strings.)
            var escaped = name.ToLowerInvariant().Replace("!", "!!", StringComparison.Ordinal).Replace("%", "!%", StringComparison.Ordinal)
                .Replace("_", "!_", StringComparison.Ordinal);
            Filter("lower(b.drv_path) LIKE @name ESCAPE '!'", "name", new string('_', 32) + "-%" + escaped + "%");
        }

        var from = account is null ? "builds b" : "build_accounts f JOIN builds b ON b.id = f.build_id";
        var sql = $"SELECT {BuildColumns} FROM {from}{(where.Count == 0 ? "" : " WHERE " + string.Join(" AND ", where))} ORDER BY b.id DESC LIMIT @l";
        return (sql, parameters.ToArray());
    }

    /// <summary>Tags a build (<c>@b</c>) for an account (<c>@a</c>): <c>@n</c>=<c>@v</c>, once.</summary>
    public const string TagBuild = "INSERT INTO build_tags (build_id, account_id, name, value) VALUES (@b, @a, @n, @v) ON CONFLICT DO NOTHING";

    /// <summary>
    /// Every account's storage as the sample for day <c>@d</c> (an account with no paths as zero; deleted ones not at
    /// all). An upsert's SELECT needs a WHERE for SQLite to parse it.
    /// </summary>
    public const string RecordStorage = """
        INSERT INTO storage_samples (account_id, day, paths, nar_bytes)
        SELECT a.id, @d, COUNT(p.id), CAST(COALESCE(SUM(p.nar_size), 0) AS BIGINT) FROM accounts a LEFT JOIN paths p ON p.account_id = a.id WHERE a.name NOT LIKE '(deleted%' GROUP BY a.id
        ON CONFLICT (account_id, day) DO UPDATE SET paths = excluded.paths, nar_bytes = excluded.nar_bytes
        """;

    /// <summary>An account's (<c>@a</c>) storage samples from day <c>@f</c> to before day <c>@t</c>.</summary>
    public const string StorageHistory = "SELECT day, paths, nar_bytes FROM storage_samples WHERE account_id = @a AND day >= @f AND day < @t ORDER BY day";

    /// <summary>Adds bytes (<c>@u</c> up, <c>@w</c> down) to an account's (<c>@a</c>) day (<c>@d</c>), unless the account was deleted.</summary>
    public const string AddTransfers = """
        INSERT INTO transfers (account_id, day, uploaded, downloaded)
        SELECT id, @d, @u, @w FROM accounts WHERE id = @a AND name NOT LIKE '(deleted%'
        ON CONFLICT (account_id, day) DO UPDATE SET uploaded = transfers.uploaded + excluded.uploaded, downloaded = transfers.downloaded + excluded.downloaded
        """;

    /// <summary>An account's (<c>@a</c>) transfers from day <c>@f</c> to before day <c>@t</c>.</summary>
    public const string Transfers = "SELECT account_id, day, uploaded, downloaded FROM transfers WHERE account_id = @a AND day >= @f AND day < @t ORDER BY day";

    public static TransferSample ReadTransfer(DbDataReader reader) => new(reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2), reader.GetInt64(3));

    /// <summary>An account's (<c>@a</c>) storage now: paths and NAR bytes.</summary>
    public const string Storage = "SELECT COUNT(id), CAST(COALESCE(SUM(nar_size), 0) AS BIGINT) FROM paths WHERE account_id = @a";

    public static StorageSample ReadStorageSample(DbDataReader reader) => new(reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2));

    /// <summary>An account's (<c>@a</c>) settings, every scope's.</summary>
    public const string Settings = "SELECT scope, name, value, final FROM settings WHERE account_id = @a ORDER BY scope, name";

    public static SettingRecord ReadSetting(DbDataReader reader) => new(reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.GetBoolean(3));

    /// <summary>Sets a setting (<c>@a</c>, <c>@s</c>cope, <c>@n</c>ame, <c>@v</c>alue, <c>@f</c>inal).</summary>
    public const string SetSetting = """
        INSERT INTO settings (account_id, scope, name, value, final) VALUES (@a, @s, @n, @v, @f)
        ON CONFLICT (account_id, scope, name) DO UPDATE SET value = excluded.value, final = excluded.final
        """;

    public const string UnsetSetting = "DELETE FROM settings WHERE account_id = @a AND scope = @s AND name = @n";

    /// <summary>Whether account <c>@a</c> exists and is not deleted.</summary>
    public static readonly string LiveAccount = $"SELECT 1 FROM accounts WHERE id = @a AND name NOT LIKE '{Accounts.AccountName.DeletedPrefix}%'";

    /// <summary>Why an account is not deleted while builds it was for run.</summary>
    public static Kiln.Protocol.KilnException RunningBuilds() => new(Kiln.Protocol.ErrorKind.Conflict,
        "the account has builds running: cancel them (the dashboard, the API) or wait for them to end, then delete it");

    /// <summary>Whether a build account <c>@a</c> was for still runs.</summary>
    public const string AccountBuildRunning =
        "SELECT 1 FROM build_accounts f JOIN builds b ON b.id = f.build_id WHERE f.account_id = @a AND b.status = 'running' LIMIT 1";

    /// <summary>
    /// Deleting account <c>@a</c>, in order. Rows that carry an id are emptied rather than removed — the account's
    /// (renamed <c>(deleted ID)</c>, its settings cleared) and those of the builds only it was for (every field but the
    /// id cleared) — because SQLite gives the highest free id to the next row, and a running server may still hold
    /// one in memory: a later account or build must never be given a deleted one's id. Builds other accounts were
    /// for too stay theirs, with the nameless account as their starter. Its tags and build links, its view
    /// (references, signatures and outputs by statements of their own, not left to cascades the providers order
    /// differently), roots, keys, tokens, signing key and storage samples go. The builds statement returns the ids
    /// emptied (their logs are the caller's to delete).
    /// </summary>
    public static IReadOnlyList<string> DeleteAccount { get; } =
    [
        """
        UPDATE builds SET step_key = '', drv_path = '', pname = '', status = 'failed', failure = '', error = '', started = 0, stopped = 0,
            cpu_user_us = NULL, cpu_system_us = NULL, peak_memory = NULL, outputs = '[]', agent = '', attempts = 1
        WHERE account_id = @a AND NOT EXISTS (SELECT 1 FROM build_accounts f WHERE f.build_id = builds.id AND f.account_id <> @a) RETURNING id
        """,
        "DELETE FROM build_tags WHERE account_id = @a",
        "DELETE FROM build_accounts WHERE account_id = @a",
        "DELETE FROM refs WHERE referrer IN (SELECT id FROM paths WHERE account_id = @a)",
        "DELETE FROM sigs WHERE path_id IN (SELECT id FROM paths WHERE account_id = @a)",
        "DELETE FROM drv_outputs WHERE drv_id IN (SELECT id FROM paths WHERE account_id = @a)",
        "DELETE FROM paths WHERE account_id = @a",
        "DELETE FROM roots WHERE account_id = @a",
        "DELETE FROM ssh_keys WHERE account_id = @a",
        "DELETE FROM tokens WHERE account_id = @a",
        "DELETE FROM signing_keys WHERE account_id = @a",
        "DELETE FROM storage_samples WHERE account_id = @a",
        "DELETE FROM transfers WHERE account_id = @a",
        "DELETE FROM pushes WHERE account_id = @a",
        "DELETE FROM server_secrets WHERE name = 'push-ssh-key:' || CAST(@a AS TEXT)",
        // Its name leaves the other accounts' sharing settings: an account made later under the same name gets none of
        // the trust or sharing given to this one. (Canonical values: names once each, single spaces. A row left empty
        // stays: empty is none, and a final one, the operator's, must keep holding.)
        $"""
        UPDATE settings SET value = trim(replace(' ' || value || ' ', ' ' || (SELECT name FROM accounts WHERE id = @a) || ' ', ' '))
        WHERE account_id <> @a AND scope = '' AND name IN ('{Accounts.AccountSharing.TrustedAccounts}', '{Accounts.AccountSharing.ShareWith}')
        """,
        "DELETE FROM settings WHERE account_id = @a",
        $"UPDATE accounts SET name = '{Accounts.AccountName.DeletedPrefix} ' || id || ')', public_cache = false, substituters = '', trusted_public_keys = '', netrc = '' WHERE id = @a",
    ];

    private const string PushColumns = "id, account_id, build_id, target, paths, state, attempts, next_attempt, uploaded, error, created, finished";

    public const string AddPush = """
        INSERT INTO pushes (account_id, build_id, target, paths, state, attempts, next_attempt, created) VALUES (@a, @b, @t, @p, 'queued', 0, @n, @n) RETURNING id
        """;

    /// <summary>Claims due pushes (<c>@n</c> now, <c>@l</c> the lease's end, <c>@c</c> how many); PostgreSQL skips rows another front door is claiming.</summary>
    public static string ClaimPushes(bool skipLocked, IReadOnlyCollection<long>? skipAccounts) => $"""
        UPDATE pushes SET attempts = attempts + 1, next_attempt = @l
        WHERE id IN (SELECT id FROM pushes WHERE state = 'queued' AND next_attempt <= @n{Excluding(skipAccounts)} ORDER BY next_attempt, id LIMIT @c{(skipLocked ? " FOR UPDATE SKIP LOCKED" : "")})
        RETURNING {PushColumns}
        """;

    // (Account ids are numbers, written into the statement as such.)
    private static string Excluding(IReadOnlyCollection<long>? accounts) => accounts is null || accounts.Count == 0 ? ""
        : $" AND account_id NOT IN ({string.Join(',', accounts.Select(a => a.ToString(System.Globalization.CultureInfo.InvariantCulture)))})";

    public const string FinishPush = "UPDATE pushes SET state = @s, uploaded = @u, error = @e, next_attempt = @r, finished = @f WHERE id = @i AND attempts = @t AND state = 'queued'";

    public const string PrunePushes = "DELETE FROM pushes WHERE state <> 'queued' AND finished < @b";

    public const string ReleasePush = "UPDATE pushes SET attempts = attempts - 1, next_attempt = @n WHERE id = @i AND attempts = @t AND state = 'queued'";

    public const string Pushes = $"SELECT {PushColumns} FROM pushes WHERE account_id = @a AND (@b = 0 OR build_id = @b) ORDER BY id DESC LIMIT @c";

    public static string StateName(PushState state) => state.ToString().ToLowerInvariant();

    public static PushRecord ReadPush(DbDataReader reader) => new(reader.GetInt64(0), reader.GetInt64(1), reader.GetInt64(2), reader.GetString(3),
        reader.GetString(4).Split(' ', StringSplitOptions.RemoveEmptyEntries), Enum.Parse<PushState>(reader.GetString(5), ignoreCase: true), (int)reader.GetInt64(6),
        reader.GetInt64(7), reader.GetInt64(8), reader.GetString(9), reader.GetInt64(10), reader.GetInt64(11));

    /// <summary>The tags of a build (<c>@b</c>) for an account (<c>@a</c>).</summary>
    public const string BuildTags = "SELECT name, value FROM build_tags WHERE build_id = @b AND account_id = @a ORDER BY name, value";

    public static BuildTag ReadTag(DbDataReader reader) => new(reader.GetString(0), reader.GetString(1));

    public const string BuildColumns =
        "b.id, b.step_key, b.drv_path, b.account_id, b.status, b.failure, b.error, b.started, b.stopped, b.cpu_user_us, b.cpu_system_us, b.peak_memory, b.outputs, b.agent, b.attempts, b.ran_from";

    public static BuildRecord ReadBuild(DbDataReader reader) => new()
    {
        Id = reader.GetInt64(0),
        StepKey = reader.GetString(1),
        DrvPath = reader.GetString(2),
        AccountId = reader.GetInt64(3),
        Running = reader.GetString(4) == "running",
        Succeeded = reader.GetString(4) == "built",
        Failure = reader.GetString(5),
        Error = reader.GetString(6),
        Started = reader.GetInt64(7),
        Stopped = reader.GetInt64(8),
        CpuUserMicroseconds = reader.IsDBNull(9) ? null : reader.GetInt64(9),
        CpuSystemMicroseconds = reader.IsDBNull(10) ? null : reader.GetInt64(10),
        PeakMemory = reader.IsDBNull(11) ? null : reader.GetInt64(11),
        Outputs = ParseOutputs(reader.GetString(12)),
        Agent = reader.GetString(13),
        Attempts = (int)reader.GetInt64(14),
        RanFrom = reader.IsDBNull(15) ? null : reader.GetInt64(15),
    };

    // Outputs as JSON in one column: they are only ever read whole, with their build.
    public static string OutputsJson(IReadOnlyList<BuildOutputRecord> outputs) =>
        JsonSerializer.Serialize(outputs.Select(o => new StoredOutput(o.Name, o.Path.FullPath, o.NarHash.ToString(HashFormat.Nix32, true), o.NarSize,
            o.References.Select(r => r.FullPath).ToList(), o.ContentAddress?.ToString())).ToList(), JsonContext.Default.ListStoredOutput);

    private static List<BuildOutputRecord> ParseOutputs(string json) =>
        JsonSerializer.Deserialize(json, JsonContext.Default.ListStoredOutput)!.Select(o => new BuildOutputRecord(o.Name, StorePath.Parse(o.Path),
            NixHash.ParseAnyPrefixed(o.NarHash), o.NarSize, o.References.Select(StorePath.Parse).ToList(), o.Ca is null ? null : ContentAddress.Parse(o.Ca))).ToList();

    public static string JsonArray(IEnumerable<string> values) => JsonSerializer.Serialize(values.ToArray(), JsonContext.Default.StringArray);

    /// <summary>
    /// A provider's numbered migrations: embedded resources named <c>{prefix}NNNN_description.sql</c>, in number order,
    /// each script read only when asked for (every <c>kiln</c> command opens the store through its migrations, and
    /// mostly finds them all applied).
    /// </summary>
    public static IEnumerable<(long Version, Func<string> ReadSql)> Migrations(string prefix)
    {
        var assembly = Assembly.GetExecutingAssembly();
        foreach (var name in assembly.GetManifestResourceNames().Where(n => n.StartsWith(prefix, StringComparison.Ordinal)).Order(StringComparer.Ordinal))
        {
            var version = long.Parse(name[prefix.Length..].Split('_')[0], System.Globalization.CultureInfo.InvariantCulture);
            yield return (version, () => Read(assembly, name));
        }

        static string Read(Assembly assembly, string name)
        {
            using var stream = assembly.GetManifestResourceStream(name)!;
            using var reader = new StreamReader(stream, Encoding.UTF8);
            return reader.ReadToEnd();
        }
    }

    public static long Now() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();
}

/// <summary>A build output as the <c>outputs</c> column keeps it.</summary>
internal sealed record StoredOutput(string Name, string Path, string NarHash, long NarSize, List<string> References, string? Ca);

[System.Text.Json.Serialization.JsonSerializable(typeof(string[]))]
[System.Text.Json.Serialization.JsonSerializable(typeof(List<StoredOutput>))]
internal sealed partial class JsonContext : System.Text.Json.Serialization.JsonSerializerContext;
