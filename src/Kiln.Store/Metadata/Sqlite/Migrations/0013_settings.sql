-- Settings an account, or one of its keys or tokens, gives itself (the hierarchy: server → account → key/token →
-- session → derivation). scope: '' for the account, 'key:<fingerprint>' or 'token:<id>'. value: the setting's
-- canonical text (seconds, bytes, a count). final: lower levels may not change it.
CREATE TABLE settings (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    final INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, scope, name)
) WITHOUT ROWID;
