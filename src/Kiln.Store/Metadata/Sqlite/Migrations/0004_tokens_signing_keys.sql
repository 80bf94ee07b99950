-- An account whose view is readable without a token over HTTP, like a public binary cache.
ALTER TABLE accounts ADD COLUMN public_cache INTEGER NOT NULL DEFAULT 0;

-- HTTP access tokens. Only the SHA-256 of a token is kept (hex): the token itself is shown once, when created.
-- permissions as for SSH keys (space-separated). expires: Unix seconds or NULL; revoked: Unix seconds or NULL.
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    token_hash TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    permissions TEXT NOT NULL,
    expires INTEGER,
    revoked INTEGER,
    created INTEGER NOT NULL
);
CREATE INDEX tokens_account ON tokens (account_id, id);

-- An account's own signing key (Nix's secret key file format, name:base64): it signs everything built for the
-- account, so its users can trust just that key. One per account; created again, it replaces the old one.
CREATE TABLE signing_keys (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id),
    secret TEXT NOT NULL,
    created INTEGER NOT NULL
);
