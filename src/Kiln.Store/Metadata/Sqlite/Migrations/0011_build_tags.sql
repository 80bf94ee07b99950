-- Tags a request gave the builds it started, joined or reused (KILN_TAG_<name>=value in the SSH session's
-- environment): per account, since each account's requests tag the builds for them; a build may carry several values
-- of one name (two CI runs that both reused it).
CREATE TABLE build_tags (
    build_id INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (build_id, account_id, name, value)
) WITHOUT ROWID;
CREATE INDEX build_tags_lookup ON build_tags (account_id, name, value, build_id);
