-- How many times agents took a build (a lost agent's build runs again elsewhere; one killed by its memory grant runs
-- again with more): 1 for a build that ran once.
ALTER TABLE builds ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;

-- Each account's storage once a day (the latest sample of the day wins): the usage report's storage over time.
-- day: Unix days (seconds / 86400, UTC).
CREATE TABLE storage_samples (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    day INTEGER NOT NULL,
    paths INTEGER NOT NULL,
    nar_bytes INTEGER NOT NULL,
    PRIMARY KEY (account_id, day)
) WITHOUT ROWID;
