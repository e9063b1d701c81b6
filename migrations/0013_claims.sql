-- Live fleets and --keep-one-key across runs on one database (issues 21 and 26, M2).

-- `--max-down-per COLUMN`: each instance's value of that input column (its budget
-- group), written when the run is planned; the survey copies it into `power.grp`.
CREATE TABLE live_groups (
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    instance_id     TEXT    NOT NULL,
    grp             TEXT    NOT NULL,
    PRIMARY KEY (run_id, instance_id)
) WITHOUT ROWID;

-- One run at a time may unbind an instance's keys under --keep-one-key or take it
-- down under a downtime budget: the run holding the instance's claim. A claim is
-- taken in the transaction of the outcome that decides (a look that releases the
-- instance's unbinds, an admission that stops it), released when the run is done
-- with the instance (back up; the run ended), and taken over from a run that is not
-- running any more only when that run has nothing left in flight on the instance
-- (src/store/claims.rs).
CREATE TABLE claims (
    region          TEXT    NOT NULL,
    instance_id     TEXT    NOT NULL,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    -- Why it was taken: `last_key` (--keep-one-key) or `down` (a live run's stop).
    reason          TEXT    NOT NULL CHECK (reason IN ('last_key', 'down')),
    taken_at        INTEGER NOT NULL,
    PRIMARY KEY (region, instance_id)
) WITHOUT ROWID;
CREATE INDEX claims_run ON claims (run_id);
