-- Secrets of the service as a whole, not of one front door: Kiln's build signing key and the SSH host key. Kept here
-- so every front door on one database signs with the same key and shows clients the same host key; the first front
-- door to start puts its own (or a new one) here, later ones adopt it.
CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,              -- build-key | ssh-host-key | installation (an id, not a secret)
    secret TEXT NOT NULL,
    created INTEGER NOT NULL
);
