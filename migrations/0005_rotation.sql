-- no-transaction
-- Key rotation: an item is one pair of one of two kinds. An unbind item (`bind` 0:
-- DisassociateInstancesKeyPairs, the input's pairs) may name the new key(s) bound first (`new_key_id`),
-- and waits (`held`) until its instance's new keys are confirmed bound, or until
-- `--keep-one-key` has looked at its instance; a bind item (`bind` 1:
-- AssociateInstancesKeyPairs) is one (instance, new key) pair of the rotation. `verified` gains the associate
-- half's words (`bound`, `not_bound`); `op_failures` counts accepted operations the
-- cloud reported FAILED, each sent again within --max-attempts.
--
-- SQLite cannot change a CHECK constraint in place: `items` is rebuilt as in 0002
-- (foreign keys off around one transaction that ends by marking version 5 in
-- `schema_marks`; `Store::open` records a marked version a kill left unrecorded).
-- Every existing row is copied as it was: an unbind item, not held, no new key.

PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE items_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    position        TEXT    NOT NULL,
    -- 0: an unbind pair (the input's; DisassociateInstancesKeyPairs); 1: a bind pair (a
    -- rotation's new key, one item per instance and new key; AssociateInstancesKeyPairs).
    -- A flag, not the action's name: 0 and 1 take no bytes in a row or an index entry.
    bind            INTEGER NOT NULL DEFAULT 0 CHECK (bind IN (0, 1)),
    region          TEXT,
    instance_id     TEXT,
    key_id          TEXT,
    -- An unbind item of a rotation row: the new key id(s), space-separated, sorted.
    new_key_id      TEXT,
    status          TEXT    NOT NULL
                    CHECK (status IN ('pending', 'succeeded', 'failed', 'rejected', 'duplicate', 'skipped')),
    -- 1 while a pending unbind item waits for a condition on its instance (new keys
    -- confirmed, or the --keep-one-key check): it has no job until released.
    held            INTEGER NOT NULL DEFAULT 0,
    duplicate_of    INTEGER REFERENCES items (id),
    reason          TEXT,
    job_id          INTEGER REFERENCES jobs (id),
    request_id      TEXT,
    error_code      TEXT,
    error_message   TEXT,
    verified        TEXT
                    CHECK (verified IN ('gone', 'still_bound', 'operating', 'operation_failed',
                                        'instance_missing', 'bound', 'not_bound')),
    verified_at     INTEGER,
    verify_request_id TEXT,
    op_failures     INTEGER NOT NULL DEFAULT 0
);
INSERT INTO items_new (id, run_id, position, region, instance_id, key_id, status, duplicate_of,
                       reason, job_id, request_id, error_code, error_message, verified,
                       verified_at, verify_request_id)
    SELECT id, run_id, position, region, instance_id, key_id, status, duplicate_of,
           reason, job_id, request_id, error_code, error_message, verified,
           verified_at, verify_request_id
    FROM items;
DROP TABLE items;
ALTER TABLE items_new RENAME TO items;
-- status then bind: the per-status counts of each half read the index alone.
CREATE INDEX items_run ON items (run_id, status, bind);
CREATE INDEX items_job ON items (job_id);
-- What a rotation looks up per instance: its held unbinds, its bind items.
CREATE INDEX items_held ON items (run_id, region, instance_id) WHERE held = 1;
CREATE INDEX items_bind ON items (run_id, region, instance_id) WHERE bind = 1;

INSERT INTO schema_marks (version) VALUES (5);

COMMIT;
PRAGMA foreign_keys = ON;
