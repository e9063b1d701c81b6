-- Live fleets (`--running stop-start|force-stop`): one row per instance of a live run,
-- where it stands in its power cycle (src/states.rs, `PowerState`). The downtime budget
-- is counted from these rows, in the transaction of each outcome, so it holds across a
-- crash: a stop sent and RUNNING not yet confirmed is down.
CREATE TABLE power (
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    region          TEXT    NOT NULL,
    instance_id     TEXT    NOT NULL,
    state           TEXT    NOT NULL
                    CHECK (state IN ('waiting', 'stopping', 'stopped', 'starting', 'warming', 'up',
                                     'kept', 'not_stopped', 'left_stopped')),
    -- Its order in the survey: instances go down in this order.
    seq             INTEGER NOT NULL,
    -- InstanceState when the run looked at it, its zone, its budget group's value.
    power_before    TEXT,
    zone            TEXT,
    grp             TEXT,
    -- InstanceState when the run last saw it (after its cycle).
    power_after     TEXT,
    stopped_at      INTEGER,
    started_at      INTEGER,
    up_at           INTEGER,
    start_failures  INTEGER NOT NULL DEFAULT 0,
    reason          TEXT,
    PRIMARY KEY (run_id, region, instance_id)
) WITHOUT ROWID;
CREATE INDEX power_state ON power (run_id, state);

-- Whether a live run takes further instances down: NULL (it does), or why not: a start
-- failed for good (`halted: ...`), or an interrupt drains it (`draining`, cleared on resume).
ALTER TABLE runs ADD COLUMN admissions TEXT;
