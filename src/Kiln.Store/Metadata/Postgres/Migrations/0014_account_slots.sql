-- An account's max-jobs across front doors (see the SQLite migration 0017).
ALTER TABLE step_claims ADD COLUMN slot_account bigint;
CREATE INDEX step_claims_slot ON step_claims (slot_account) WHERE slot_account IS NOT NULL;
