-- keyfleet's durable queue. Times are Unix milliseconds (UTC).

-- One run: one input file planned with one set of options.
CREATE TABLE runs (
    id              INTEGER PRIMARY KEY,
    created_at      INTEGER NOT NULL,
    input_path      TEXT    NOT NULL,
    input_sha256    TEXT    NOT NULL,
    -- Canonical JSON of the options that shape the plan (default region, force_stop, format, strict).
    options         TEXT    NOT NULL,
    -- planned -> running -> finished; stopped = ended early, resumable.
    state           TEXT    NOT NULL DEFAULT 'planned'
                    CHECK (state IN ('planned', 'running', 'stopped', 'finished')),
    rows_read       INTEGER NOT NULL DEFAULT 0,
    pairs           INTEGER NOT NULL DEFAULT 0,
    duplicates      INTEGER NOT NULL DEFAULT 0,
    rejected        INTEGER NOT NULL DEFAULT 0,
    -- Distinct instances, keys and regions among the valid pairs, as planned.
    instances       INTEGER NOT NULL DEFAULT 0,
    keys            INTEGER NOT NULL DEFAULT 0,
    regions         INTEGER NOT NULL DEFAULT 0,
    started_at      INTEGER,
    finished_at     INTEGER,
    stop_reason     TEXT,
    -- The process that owns the run while it executes (see store::queue leases).
    owner_pid       INTEGER,
    owner_host      TEXT,
    owner_token     TEXT,
    heartbeat_at    INTEGER,
    UNIQUE (input_sha256, options)
);

-- One API request's worth of work: InstanceIds x KeyIds in one region.
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    region          TEXT    NOT NULL,
    force_stop      INTEGER NOT NULL DEFAULT 0,
    -- JSON arrays of ids, sorted.
    instance_ids    TEXT    NOT NULL,
    key_ids         TEXT    NOT NULL,
    pair_count      INTEGER NOT NULL,
    -- queued: waits for next_attempt_at; in_flight: an attempt is open;
    -- succeeded / failed: final; split: replaced by its children (parent_job_id).
    state           TEXT    NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'in_flight', 'succeeded', 'failed', 'split')),
    -- Attempts that spent the Retry budget; throttled attempts are counted apart.
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
CREATE INDEX jobs_due ON jobs (run_id, state, next_attempt_at);
CREATE INDEX jobs_parent ON jobs (parent_job_id);

-- One input row (a set row expands to one item per pair), rejected ones included.
-- An item is a pair: its status is the pair's outcome.
CREATE TABLE items (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    -- Where the row stands in the input: "line 12", "index 3", "index 3, pair 2".
    position        TEXT    NOT NULL,
    region          TEXT,
    instance_id     TEXT,
    key_id          TEXT,
    status          TEXT    NOT NULL
                    CHECK (status IN ('pending', 'succeeded', 'failed', 'rejected', 'duplicate')),
    -- For a duplicate: the item whose outcome it shares.
    duplicate_of    INTEGER REFERENCES items (id),
    -- For a rejected row: why, in words for a person.
    reason          TEXT,
    job_id          INTEGER REFERENCES jobs (id),
    request_id      TEXT,
    error_code      TEXT,
    error_message   TEXT
);
CREATE INDEX items_run ON items (run_id, status);
CREATE INDEX items_job ON items (job_id);

-- Every request sent. The row is written before the request and completed after;
-- an attempt with no finished_at after a crash is uncertain and its job is sent again.
CREATE TABLE attempts (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL REFERENCES jobs (id),
    number          INTEGER NOT NULL,
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    -- succeeded, error (an API error reply), transport (no reply), lost (crash: outcome unknown).
    outcome         TEXT CHECK (outcome IN ('succeeded', 'error', 'transport', 'lost')),
    request_id      TEXT,
    error_code      TEXT,
    error_message   TEXT,
    http_status     INTEGER,
    latency_ms      INTEGER
);
CREATE INDEX attempts_job ON attempts (job_id);
