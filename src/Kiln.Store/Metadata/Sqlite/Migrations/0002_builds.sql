-- One row per build Kiln ran (or refused): what it built, for whom, how it ended and what it used. step_key is
-- the derivation plus the NAR hashes of its whole input closure, so an identical later request (from any
-- account) finds a successful build here and reuses its outputs instead of building again.
CREATE TABLE builds (
    id INTEGER PRIMARY KEY,
    step_key TEXT NOT NULL,
    drv_path TEXT NOT NULL,             -- base name
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    status TEXT NOT NULL,               -- built | failed
    failure TEXT NOT NULL DEFAULT '',   -- the failure kind when failed
    error TEXT NOT NULL DEFAULT '',
    started INTEGER NOT NULL,
    stopped INTEGER NOT NULL,
    cpu_user_us INTEGER,
    cpu_system_us INTEGER,
    peak_memory INTEGER,
    outputs TEXT NOT NULL DEFAULT '[]'  -- JSON: name, path, narHash, narSize, references, ca
);
CREATE INDEX builds_step_key ON builds (step_key, status);
CREATE INDEX builds_account ON builds (account_id, id);
