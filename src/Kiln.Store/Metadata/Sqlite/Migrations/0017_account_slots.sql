-- An account's max-jobs across front doors: a claimed step that runs as one of its account's builds says so here
-- (slot_account), so every front door counts the account's running builds alike; the slot lapses with the claim.
ALTER TABLE step_claims ADD COLUMN slot_account INTEGER;
CREATE INDEX step_claims_slot ON step_claims (slot_account) WHERE slot_account IS NOT NULL;
