-- Turns at periodic work one front door does for all (see the SQLite migration 0016).
CREATE TABLE sweep_turns (
    name text PRIMARY KEY,
    taken bigint NOT NULL
);
