-- Which front door is building a step until when (see the SQLite migration 0006).
CREATE TABLE step_claims (
    step_key text PRIMARY KEY,
    owner text NOT NULL,
    expires bigint NOT NULL
);
CREATE INDEX step_claims_owner ON step_claims (owner);
