-- Secrets of the service as a whole (see the SQLite migration 0007).
CREATE TABLE server_secrets (
    name text PRIMARY KEY,
    secret text NOT NULL,
    created bigint NOT NULL
);
