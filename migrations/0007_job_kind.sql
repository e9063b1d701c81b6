-- A job's kind: its step in an instance's workflow (src/states.rs, `JobKind`), stored
-- in a column of its own so that what follows an outcome is decided from the kind by
-- pure rules (src/rules/), not from a purpose inside the JSON payload. Until now a
-- DescribeInstances job's purpose was `payload.purpose` (absent: a verification).
--
-- Every existing job gets its kind from its action and that purpose; the payload keeps
-- the old field, which nothing reads any more.
ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'unbind'
    CHECK (kind IN ('unbind', 'bind', 'confirm', 'look', 'verify'));

UPDATE jobs SET kind = CASE action
    WHEN 'DisassociateInstancesKeyPairs' THEN 'unbind'
    WHEN 'AssociateInstancesKeyPairs' THEN 'bind'
    ELSE CASE WHEN json_valid(payload) THEN
        CASE json_extract(payload, '$.purpose')
            WHEN 'confirm' THEN 'confirm'
            WHEN 'precheck' THEN 'look'
            ELSE 'verify' END
        ELSE 'verify' END
    END;
