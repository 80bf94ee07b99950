-- Tags a request gave the builds it was for (see the SQLite migration 0011).
CREATE TABLE build_tags (
    build_id bigint NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    account_id bigint NOT NULL REFERENCES accounts(id),
    name text NOT NULL,
    value text NOT NULL,
    PRIMARY KEY (build_id, account_id, name, value)
);
CREATE INDEX build_tags_lookup ON build_tags (account_id, name, value, build_id);
