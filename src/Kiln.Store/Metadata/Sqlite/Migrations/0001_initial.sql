-- Accounts own views of the store. The unix socket's account ("local" by default) is created on first use.
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL
);

-- One row per (account, store path): the account's view. Content (the NAR) is global, keyed by nar_hash,
-- and stored once in the blob directory however many rows name it.
CREATE TABLE paths (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    path TEXT NOT NULL,                 -- base name: <hash>-<name>
    hash_part TEXT NOT NULL,            -- for QueryPathFromHashPart
    nar_hash BLOB NOT NULL,             -- sha256 of the NAR, 32 bytes
    nar_size INTEGER NOT NULL,
    deriver TEXT,                       -- base name of the .drv, as the uploader said
    ca TEXT,                            -- content address, when the path has one
    registration_time INTEGER NOT NULL,
    ultimate INTEGER NOT NULL DEFAULT 0,
    self_reference INTEGER NOT NULL DEFAULT 0,
    provenance TEXT NOT NULL,           -- uploaded | built | substituted | shared
    trust TEXT NOT NULL,                -- untrusted | content-addressed | signed | built
    UNIQUE (account_id, path)
);
CREATE INDEX paths_hash_part ON paths (account_id, hash_part);
CREATE INDEX paths_nar_hash ON paths (nar_hash);

-- References within a view (the path itself is paths.self_reference). A path that others refer to cannot be
-- deleted before them.
CREATE TABLE refs (
    referrer INTEGER NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
    reference INTEGER NOT NULL REFERENCES paths(id) ON DELETE RESTRICT,
    PRIMARY KEY (referrer, reference)
) WITHOUT ROWID;
CREATE INDEX refs_reference ON refs (reference);

CREATE TABLE sigs (
    path_id INTEGER NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
    sig TEXT NOT NULL,
    PRIMARY KEY (path_id, sig)
) WITHOUT ROWID;

-- The outputs a .drv in the view declares, for QueryDerivationOutputMap and QueryValidDerivers.
CREATE TABLE drv_outputs (
    drv_id INTEGER NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
    output TEXT NOT NULL,
    path TEXT,                          -- base name; NULL when not known statically (floating CA)
    PRIMARY KEY (drv_id, output)
) WITHOUT ROWID;
CREATE INDEX drv_outputs_path ON drv_outputs (path);

-- Garbage collector roots per account: permanent (AddPermRoot, kiln) and indirect (a client's symlink).
CREATE TABLE roots (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    kind TEXT NOT NULL,                 -- perm | indirect
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (account_id, kind, name)
);
