-- A build's derivation name without its version (Nix's DrvName: 'hello' for hello-2.12), so a new build of the same
-- package can be given memory from how much earlier builds used.
ALTER TABLE builds ADD COLUMN pname TEXT NOT NULL DEFAULT '';
CREATE INDEX builds_pname ON builds (pname, id);
