-- Pushes of builds' outputs to accounts' own caches (push-to): one row per build and target, claimed by a front door
-- for a while (next_attempt moves past the lease), then done, queued again for a retry, or failed.
CREATE TABLE pushes (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    build_id INTEGER NOT NULL,          -- the build whose outputs go (0: none recorded)
    target TEXT NOT NULL,               -- the push-to URL (no credentials: those are in the account's netrc)
    paths TEXT NOT NULL,                -- the outputs' base names, space-separated
    state TEXT NOT NULL,                -- queued | done | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER NOT NULL,      -- Unix seconds: when it is due (again)
    uploaded INTEGER NOT NULL DEFAULT 0, -- paths the last try uploaded (the others were there)
    error TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX pushes_due ON pushes (state, next_attempt);
CREATE INDEX pushes_account_build ON pushes (account_id, build_id);
