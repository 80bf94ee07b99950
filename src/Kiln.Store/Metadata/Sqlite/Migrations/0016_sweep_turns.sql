-- Turns at periodic work that one process on this metadata does for all (the sweep of the blobs nothing names, which
-- lists a whole bucket): several front doors on one database take it in turn, once per interval between them.
CREATE TABLE sweep_turns (
    name TEXT PRIMARY KEY,
    taken INTEGER NOT NULL              -- Unix seconds, by the database's clock
);
