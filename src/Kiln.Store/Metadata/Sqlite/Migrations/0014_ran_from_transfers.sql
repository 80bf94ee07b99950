-- When the build began to run on its agent (Unix seconds), as the agent reported it; started is when it was asked
-- for (it may wait in line, behind its account's max-jobs or a busy farm). NULL for builds recorded before, and
-- for builds that never ran.
ALTER TABLE builds ADD COLUMN ran_from INTEGER;

-- The NAR bytes each account uploaded (paths registered from its sessions) and downloaded (NARs Kiln sent its
-- sessions and HTTP requests) per day (Unix days, UTC); front doors add to the day's row.
CREATE TABLE transfers (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    day INTEGER NOT NULL,
    uploaded INTEGER NOT NULL DEFAULT 0,
    downloaded INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
);

-- The CPU quota sums the builds an account started this month: found by account and start, not by its whole history.
CREATE INDEX builds_account_started ON builds (account_id, started);

-- When the account last used the path (Unix seconds: downloaded, a build's input or reused output; 0: not since it
-- was registered): the server's collections keep paths used within the account's retention.
ALTER TABLE paths ADD COLUMN last_used INTEGER NOT NULL DEFAULT 0;
