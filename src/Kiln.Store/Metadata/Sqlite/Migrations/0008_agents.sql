-- Tokens remote agents (kiln agent) dial in with. Only the SHA-256 of a token is kept (hex); the token is shown once.
-- A revoked token keeps its row (and its name taken): agents and logs name it. revoked: Unix seconds or NULL.
CREATE TABLE agent_tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    revoked INTEGER
);

-- Each agent's last known state as its front door saw it (kiln agents list). systems, features: space-separated.
CREATE TABLE agents (
    name TEXT PRIMARY KEY,
    token_name TEXT NOT NULL,
    systems TEXT NOT NULL,
    features TEXT NOT NULL,
    slots INTEGER NOT NULL,
    slots_busy INTEGER NOT NULL,
    cores INTEGER NOT NULL,
    memory INTEGER NOT NULL,
    input_cache_bytes INTEGER NOT NULL,
    builds_run INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    front_door TEXT NOT NULL,
    connected INTEGER NOT NULL
);

-- The agent that ran a build ('' for builds before agents were named, and for builds that never reached one).
ALTER TABLE builds ADD COLUMN agent TEXT NOT NULL DEFAULT '';
