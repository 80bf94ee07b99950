-- When the build began to run on its agent (see the SQLite migration 0014).
ALTER TABLE builds ADD COLUMN ran_from bigint;

-- Bytes uploaded and downloaded per account and day (see the SQLite migration 0014).
CREATE TABLE transfers (
    account_id bigint NOT NULL REFERENCES accounts(id),
    day bigint NOT NULL,
    uploaded bigint NOT NULL DEFAULT 0,
    downloaded bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, day)
);

CREATE INDEX builds_account_started ON builds (account_id, started);

-- When the account last used the path (see the SQLite migration 0014).
ALTER TABLE paths ADD COLUMN last_used bigint NOT NULL DEFAULT 0;
