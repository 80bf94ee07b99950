-- A build has a row from the moment it starts (status 'running'), so its log and the sessions waiting for it can
-- name it; and the accounts each build was for: the one that started it, those that joined it, those whose views got
-- its outputs by reuse. An account lists, and reads the logs of, exactly those builds.
CREATE TABLE build_accounts (
    build_id INTEGER NOT NULL REFERENCES builds(id) ON DELETE CASCADE,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    PRIMARY KEY (build_id, account_id)
) WITHOUT ROWID;
CREATE INDEX build_accounts_account ON build_accounts (account_id, build_id);
INSERT INTO build_accounts (build_id, account_id) SELECT id, account_id FROM builds;
CREATE INDEX builds_drv ON builds (drv_path, id);
CREATE INDEX builds_running ON builds (status) WHERE status = 'running';
