-- no-transaction
-- One queue, many actions: a job names its API action and carries a payload, and may
-- wait for other jobs (job_deps); a job whose prerequisite failed is `skipped`, and so
-- are its pairs. Items gain the verification columns (`keyfleet verify`), attempts the
-- moment the request really left (pacing across restarts).
--
-- SQLite cannot change a CHECK constraint in place, so `jobs` and `items` are rebuilt
-- (SQLite's documented procedure: foreign keys off around one transaction; a test runs
-- foreign_key_check on a migrated 0.1.0 database). Everything else about the rows is
-- copied as it was.
--
-- Foreign keys can only be turned off outside a transaction, so this migration runs
-- outside the migrator's: its own transaction ends by marking version 2 in
-- `schema_marks`. A kill between that commit and the migrator's record is repaired
-- when the database is next opened (`Store::open` records marked versions first).

PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE jobs_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    -- The CVM API action this job sends (src/cvm.rs).
    action          TEXT    NOT NULL DEFAULT 'DisassociateInstancesKeyPairs'
                    CHECK (action IN ('DisassociateInstancesKeyPairs', 'AssociateInstancesKeyPairs',
                                      'DescribeInstances', 'DescribeKeyPairs', 'DescribeRegions')),
    region          TEXT    NOT NULL,
    force_stop      INTEGER NOT NULL DEFAULT 0,
    -- JSON arrays of ids, sorted.
    instance_ids    TEXT    NOT NULL,
    key_ids         TEXT    NOT NULL,
    -- Action-specific JSON (a verification batch's item ids, a page offset); NULL for none.
    payload         TEXT,
    pair_count      INTEGER NOT NULL,
    -- queued: waits for next_attempt_at and for every job it depends on to succeed;
    -- in_flight: an attempt is open; succeeded / failed: final; split: replaced by its
    -- children (parent_job_id); skipped: final, never sent because a prerequisite failed.
    state           TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'in_flight', 'succeeded', 'failed', 'split', 'skipped')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    throttles       INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error_code TEXT,
    last_error_message TEXT,
    request_id      TEXT,
    parent_job_id   INTEGER REFERENCES jobs (id),
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER
);
INSERT INTO jobs_new (id, run_id, region, force_stop, instance_ids, key_ids, pair_count, state,
                      attempts, throttles, next_attempt_at, last_error_code, last_error_message,
                      request_id, parent_job_id, created_at, finished_at)
    SELECT id, run_id, region, force_stop, instance_ids, key_ids, pair_count, state,
           attempts, throttles, next_attempt_at, last_error_code, last_error_message,
           request_id, parent_job_id, created_at, finished_at
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_due ON jobs (run_id, state, next_attempt_at);
CREATE INDEX jobs_parent ON jobs (parent_job_id);

-- A job is due only once every job it depends on has succeeded. A split moves these
-- rows onto the children, both ways.
CREATE TABLE job_deps (
    job_id          INTEGER NOT NULL REFERENCES jobs (id),
    depends_on      INTEGER NOT NULL REFERENCES jobs (id),
    PRIMARY KEY (job_id, depends_on)
) WITHOUT ROWID;
CREATE INDEX job_deps_on ON job_deps (depends_on);

CREATE TABLE items_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    position        TEXT    NOT NULL,
    region          TEXT,
    instance_id     TEXT,
    key_id          TEXT,
    -- skipped: valid, never sent, because a job it waited for failed (see reason).
    status          TEXT    NOT NULL
                    CHECK (status IN ('pending', 'succeeded', 'failed', 'rejected', 'duplicate', 'skipped')),
    duplicate_of    INTEGER REFERENCES items (id),
    reason          TEXT,
    job_id          INTEGER REFERENCES jobs (id),
    request_id      TEXT,
    error_code      TEXT,
    error_message   TEXT,
    -- What the cloud itself says of the pair (DescribeInstances), NULL until verified.
    verified        TEXT
                    CHECK (verified IN ('gone', 'still_bound', 'operating', 'operation_failed',
                                        'instance_missing')),
    verified_at     INTEGER,
    -- The DescribeInstances reply the verification rests on.
    verify_request_id TEXT
);
INSERT INTO items_new (id, run_id, position, region, instance_id, key_id, status, duplicate_of,
                       reason, job_id, request_id, error_code, error_message)
    SELECT id, run_id, position, region, instance_id, key_id, status, duplicate_of,
           reason, job_id, request_id, error_code, error_message
    FROM items;
DROP TABLE items;
ALTER TABLE items_new RENAME TO items;
CREATE INDEX items_run ON items (run_id, status);
CREATE INDEX items_job ON items (job_id);

-- When the request really left (after pacing), as opposed to when its row was written.
ALTER TABLE attempts ADD COLUMN sent_at INTEGER;
CREATE INDEX attempts_sent ON attempts (sent_at);

CREATE TABLE IF NOT EXISTS schema_marks (version INTEGER PRIMARY KEY);
INSERT INTO schema_marks (version) VALUES (2);

COMMIT;
PRAGMA foreign_keys = ON;
