-- Stock Nix machines as builders (see the SQLite migration 0010).
CREATE TABLE builders (
    name text PRIMARY KEY,
    uri text NOT NULL,
    systems text NOT NULL,
    features text NOT NULL,
    max_jobs bigint NOT NULL,
    ssh_key text NOT NULL,
    host_key text NOT NULL,
    created bigint NOT NULL
);
