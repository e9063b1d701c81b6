-- no-transaction
-- A job's kind: its step in an instance's workflow (src/states.rs, `JobKind`), stored in
-- a column of its own so that what follows an outcome is decided from the kind by pure
-- rules (src/rules/), not from a purpose inside the JSON payload. Until now a
-- DescribeInstances job's purpose was `payload.purpose` (absent: a verification). The
-- live-fleet steps (survey, stop, settle, start) join the kinds, and StopInstances and
-- StartInstances the actions a job may send.
--
-- SQLite cannot change a CHECK constraint in place, so `jobs` is rebuilt as in 0002
-- (foreign keys off around one transaction that ends by marking version 7 in
-- `schema_marks`; `Store::open` records a marked version a kill left unrecorded).
-- Every existing job gets its kind from its action and that purpose; every other column
-- is copied as it was (the payload keeps the old field, which nothing reads any more).

PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE jobs_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    -- The job's step in an instance's workflow; what follows its outcome.
    kind            TEXT    NOT NULL
                    CHECK (kind IN ('unbind', 'bind', 'confirm', 'look', 'verify', 'survey', 'stop',
                                    'settle', 'start')),
    -- The API action this job sends (src/cvm.rs): its kind's.
    action          TEXT    NOT NULL
                    CHECK (action IN ('DisassociateInstancesKeyPairs', 'AssociateInstancesKeyPairs',
                                      'DescribeInstances', 'DescribeKeyPairs', 'DescribeRegions',
                                      'StopInstances', 'StartInstances')),
    region          TEXT    NOT NULL,
    force_stop      INTEGER NOT NULL DEFAULT 0,
    -- JSON arrays of ids, sorted.
    instance_ids    TEXT    NOT NULL,
    key_ids         TEXT    NOT NULL,
    -- Kind-specific JSON (the pairs a read decides on, a settle's target); NULL for none.
    payload         TEXT,
    pair_count      INTEGER NOT NULL,
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
INSERT INTO jobs_new (id, run_id, kind, action, region, force_stop, instance_ids, key_ids, payload,
                      pair_count, state, attempts, throttles, next_attempt_at, last_error_code,
                      last_error_message, request_id, parent_job_id, created_at, finished_at)
    SELECT id, run_id,
           CASE action
               WHEN 'DisassociateInstancesKeyPairs' THEN 'unbind'
               WHEN 'AssociateInstancesKeyPairs' THEN 'bind'
               ELSE CASE WHEN json_valid(payload) THEN
                   CASE json_extract(payload, '$.purpose')
                       WHEN 'confirm' THEN 'confirm'
                       WHEN 'precheck' THEN 'look'
                       ELSE 'verify' END
                   ELSE 'verify' END
           END,
           action, region, force_stop, instance_ids, key_ids, payload,
           pair_count, state, attempts, throttles, next_attempt_at, last_error_code,
           last_error_message, request_id, parent_job_id, created_at, finished_at
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_due ON jobs (run_id, state, next_attempt_at);
CREATE INDEX jobs_parent ON jobs (parent_job_id);

INSERT INTO schema_marks (version) VALUES (7);

COMMIT;
PRAGMA foreign_keys = ON;
