-- A build's derivation name without its version (see the SQLite migration 0009).
ALTER TABLE builds ADD COLUMN pname text NOT NULL DEFAULT '';
CREATE INDEX builds_pname ON builds (pname, id);
