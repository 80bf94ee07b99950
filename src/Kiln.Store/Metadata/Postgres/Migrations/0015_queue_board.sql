-- The front doors' queue board (see the SQLite migration 0018).
CREATE TABLE queue_boards (
    owner text PRIMARY KEY,
    waiting integer NOT NULL,
    farm text,
    expires bigint NOT NULL
);
CREATE TABLE queue_entries (
    owner text NOT NULL,
    account bigint NOT NULL,
    build_id bigint,
    drv_path text NOT NULL,
    state text NOT NULL,
    position integer,
    agent text
);
CREATE INDEX queue_entries_account ON queue_entries (account);
CREATE INDEX queue_entries_owner ON queue_entries (owner);
CREATE TABLE queue_cancels (
    id bigserial PRIMARY KEY,
    owner text NOT NULL,
    account bigint NOT NULL,
    build_id bigint,
    drv_path text,
    asked bigint NOT NULL
);
CREATE INDEX queue_cancels_owner ON queue_cancels (owner);
