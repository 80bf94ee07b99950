-- When the build began to run on its agent (see the SQLite migration 0014).
ALTER TABLE builds ADD COLUMN ran_from bigint;
