-- Build attempts and daily storage samples (see the SQLite migration 0012).
ALTER TABLE builds ADD COLUMN attempts bigint NOT NULL DEFAULT 1;

CREATE TABLE storage_samples (
    account_id bigint NOT NULL REFERENCES accounts(id),
    day bigint NOT NULL,
    paths bigint NOT NULL,
    nar_bytes bigint NOT NULL,
    PRIMARY KEY (account_id, day)
);
