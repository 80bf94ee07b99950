-- Which front door is building a step (by step key) until when: several Kiln servers on one database build each step
-- once, and a claim whose holder stopped renewing it (killed, cut off) lapses and is taken over.
CREATE TABLE step_claims (
    step_key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,                -- the front door: host and data directory
    expires INTEGER NOT NULL            -- Unix seconds
);
CREATE INDEX step_claims_owner ON step_claims (owner);
