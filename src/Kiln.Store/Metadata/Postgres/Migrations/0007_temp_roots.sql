-- Temporary roots of live sessions, per front door, so the collector of another front door on this database spares
-- them (a front door keeps its own in memory; these rows are its copy for the others). They count while their front
-- door's lease (temp_root_doors.expires, unix seconds by the database's clock) is renewed: a front door that went away
-- stops protecting anything, and its rows go when it starts again.
CREATE TABLE temp_root_doors (
    front_door text PRIMARY KEY,
    expires bigint NOT NULL
);
CREATE TABLE temp_roots (
    front_door text NOT NULL,
    session bigint NOT NULL,
    account_id bigint NOT NULL,
    path text NOT NULL,
    PRIMARY KEY (front_door, session, path)
);
CREATE INDEX temp_roots_account ON temp_roots (account_id);
