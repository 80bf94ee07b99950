-- The front doors' queue board (IQueueBoard): each publishes its queue (one row in queue_boards, renewed until it
-- expires, with its farm as the API shows it, and its entries) so a listing through any front door shows an account's builds on all of them, and a cancel
-- through one is carried to the front door holding the request (queue_cancels, taken by that front door). One SQLite
-- server has no other front door, but keeps the same contract.
CREATE TABLE queue_boards (
    owner TEXT PRIMARY KEY,
    waiting INTEGER NOT NULL,
    farm TEXT,
    expires INTEGER NOT NULL
);
CREATE TABLE queue_entries (
    owner TEXT NOT NULL,
    account INTEGER NOT NULL,
    build_id INTEGER,
    drv_path TEXT NOT NULL,
    state TEXT NOT NULL,
    position INTEGER,
    agent TEXT
);
CREATE INDEX queue_entries_account ON queue_entries (account);
CREATE INDEX queue_entries_owner ON queue_entries (owner);
CREATE TABLE queue_cancels (
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    account INTEGER NOT NULL,
    build_id INTEGER,
    drv_path TEXT,
    asked INTEGER NOT NULL
);
CREATE INDEX queue_cancels_owner ON queue_cancels (owner);
