-- Settings of accounts, keys and tokens (see the SQLite migration 0013).
CREATE TABLE settings (
    account_id bigint NOT NULL REFERENCES accounts(id),
    scope text NOT NULL,
    name text NOT NULL,
    value text NOT NULL,
    final boolean NOT NULL DEFAULT false,
    PRIMARY KEY (account_id, scope, name)
);
