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

-- Compressed NAR files kept as they were uploaded (nar/<file hash>.nar.xz …), so that a client whose narinfo cache
-- still has the narinfo it uploaded finds the file it names. Kiln's own narinfo files name the uncompressed blob.
CREATE TABLE nar_files (
    file TEXT PRIMARY KEY,              -- the name under nar/
    nar_hash BLOB NOT NULL,             -- the NAR it decompresses to (and so who may read it)
    compression TEXT NOT NULL,
    file_size INTEGER NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX nar_files_nar_hash ON nar_files (nar_hash);

-- Upstream caches an account substitutes from (space-separated URLs; empty: the server's default), the public keys
-- it trusts for them (added to the server's), and credentials for them in netrc format (empty: none).
ALTER TABLE accounts ADD COLUMN substituters TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN trusted_public_keys TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN netrc TEXT NOT NULL DEFAULT '';
