-- Temporary roots of live sessions, per front door, so the collector of another front door on this database spares
-- them (a front door keeps its own in memory; these rows are its copy for the others). Rows lapse at `expires` (unix
-- seconds) unless their front door renews them: a front door that went away stops protecting anything.
CREATE TABLE temp_roots (
    front_door text NOT NULL,
    session bigint NOT NULL,
    account_id bigint NOT NULL,
    path text NOT NULL,
    expires bigint NOT NULL,
    PRIMARY KEY (front_door, session, path)
);
CREATE INDEX temp_roots_account ON temp_roots (account_id, expires);
