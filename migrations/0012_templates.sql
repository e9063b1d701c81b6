-- no-transaction
-- Closing an incident (issue 22): templates that hand a leaked key to new instances
-- are changed through the queue, and what `retire` found and did is kept.
--
-- Five job kinds join (src/states.rs, `JobKind`), with the actions they send:
-- `template_look` (DescribeLaunchTemplateVersions), `template`
-- (CreateLaunchTemplateVersion), `template_default` (ModifyLaunchTemplateDefaultVersion),
-- `launch_config_look` (DescribeLaunchConfigurations), `launch_config`
-- (ModifyLaunchConfigurationAttributes). SQLite cannot change a CHECK constraint in
-- place, so `jobs` is rebuilt as in 0007 (foreign keys off around one transaction that
-- ends by marking version 12 in `schema_marks`); every row and column is copied as it was.
--
-- `template_changes`: one row per launch template version or launch configuration a
-- run changes (or keeps, with the reason), where its change stands (`TemplateState`).
-- `retirements`: each `keyfleet retire` (and `run --retire`): the keys, the verdicts
-- and RequestIds as JSON, so that the incident report can tell what became of the key.

PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE jobs_new (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    -- The job's step in an instance's (or a template's) workflow; what follows its outcome.
    kind            TEXT    NOT NULL
                    CHECK (kind IN ('unbind', 'bind', 'confirm', 'look', 'verify', 'survey', 'stop',
                                    'settle', 'start', 'template_look', 'template',
                                    'template_default', 'launch_config_look', 'launch_config')),
    -- The API action this job sends (src/cvm.rs): its kind's.
    action          TEXT    NOT NULL
                    CHECK (action IN ('DisassociateInstancesKeyPairs', 'AssociateInstancesKeyPairs',
                                      'DescribeInstances', 'DescribeKeyPairs', 'DescribeRegions',
                                      'StopInstances', 'StartInstances',
                                      'DescribeLaunchTemplateVersions', 'CreateLaunchTemplateVersion',
                                      'ModifyLaunchTemplateDefaultVersion',
                                      'DescribeLaunchConfigurations',
                                      'ModifyLaunchConfigurationAttributes')),
    region          TEXT    NOT NULL,
    force_stop      INTEGER NOT NULL DEFAULT 0,
    -- JSON arrays of ids, sorted.
    instance_ids    TEXT    NOT NULL,
    key_ids         TEXT    NOT NULL,
    -- Kind-specific JSON (the pairs a read decides on, a settle's target, a template
    -- change); NULL for none.
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
    SELECT id, run_id, kind, action, region, force_stop, instance_ids, key_ids, payload,
           pair_count, state, attempts, throttles, next_attempt_at, last_error_code,
           last_error_message, request_id, parent_job_id, created_at, finished_at
    FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_due ON jobs (run_id, state, next_attempt_at);
CREATE INDEX jobs_parent ON jobs (parent_job_id);

CREATE TABLE template_changes (
    run_id          INTEGER NOT NULL REFERENCES runs (id),
    kind            TEXT    NOT NULL
                    CHECK (kind IN ('launch_template', 'launch_configuration')),
    -- `lt-...` or `asc-...`.
    template_id     TEXT    NOT NULL,
    -- The template version that held the key (0 for a launch configuration).
    version         INTEGER NOT NULL,
    name            TEXT    NOT NULL,
    region          TEXT    NOT NULL,
    was_default     INTEGER NOT NULL,
    -- JSON arrays: the keys it handed out, and what it hands out after the change.
    keys_before     TEXT    NOT NULL,
    keys_after      TEXT,
    state           TEXT    NOT NULL
                    CHECK (state IN ('pending', 'changed', 'kept', 'unchanged', 'failed')),
    -- The version the change made (a launch template).
    made_version    INTEGER,
    reason          TEXT,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (run_id, kind, template_id, version)
) WITHOUT ROWID;

CREATE TABLE retirements (
    id              INTEGER PRIMARY KEY,
    -- The run whose `--retire` it was; NULL for a `keyfleet retire` of its own.
    run_id          INTEGER REFERENCES runs (id),
    -- JSON array of the key ids asked for.
    key_ids         TEXT    NOT NULL,
    dry_run         INTEGER NOT NULL,
    -- 1 when every key was deleted and confirmed gone.
    retired         INTEGER NOT NULL,
    -- The verdicts, holds and DeleteKeyPairs RequestIds (`incident::Retirement`, JSON).
    result          TEXT    NOT NULL,
    at              INTEGER NOT NULL
);

INSERT INTO schema_marks (version) VALUES (12);

COMMIT;
PRAGMA foreign_keys = ON;
