-- Stock Nix machines the operator added as builders (kiln builder add). systems, features: space-separated.
-- ssh_key is the private key Kiln logs in with (kept here like the signing keys, so every front door has it);
-- host_key the builder's public host key line ('' to learn it on first contact).
CREATE TABLE builders (
    name TEXT PRIMARY KEY,
    uri TEXT NOT NULL,
    systems TEXT NOT NULL,
    features TEXT NOT NULL,
    max_jobs INTEGER NOT NULL,
    ssh_key TEXT NOT NULL,
    host_key TEXT NOT NULL,
    created INTEGER NOT NULL
);
