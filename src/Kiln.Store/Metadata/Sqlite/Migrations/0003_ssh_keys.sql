-- The SSH keys users log in with. A key belongs to one account (sshd offers the key, Kiln finds the account), so
-- the key blob is unique across accounts. permissions: space-separated (store:read store:write build:read
-- build:write account:write). sshd's AuthorizedKeysCommand looks keys up by (type, blob).
CREATE TABLE ssh_keys (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    key_type TEXT NOT NULL,
    key_blob TEXT NOT NULL UNIQUE,      -- base64, as in authorized_keys
    fingerprint TEXT NOT NULL UNIQUE,   -- SHA256:… as ssh-keygen -l prints it
    comment TEXT NOT NULL DEFAULT '',
    permissions TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    created INTEGER NOT NULL
);
CREATE INDEX ssh_keys_account ON ssh_keys (account_id, id);
